"""A tracking server that is away: how long to wait (``UNET_SEARCH_TRACKING_PATIENCE_S``),
retrying calls meanwhile, and the ``Outbox`` through which a training run's logging queues
what it cannot send yet, so that training goes on and nothing is lost."""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import requests

from unet_search.core.errors import UserError
from unet_search.tracking.client import (
    log_image,
    log_metrics,
    log_params,
    now_ms,
    param_value,
    set_tags,
)

if TYPE_CHECKING:
    pass


__all__ = [
    "PATIENCE_ENV",
    "DEFAULT_PATIENCE_S",
    "TrackingUnavailable",
    "tracking_patience",
    "reachable",
    "Outage",
    "require_reachable",
    "with_patience",
    "Outbox",
]


PATIENCE_ENV = "UNET_SEARCH_TRACKING_PATIENCE_S"


DEFAULT_PATIENCE_S = 600.0


_PROBE_TIMEOUT_S = 5.0


class TrackingUnavailable(UserError):
    """The MLflow tracking server stayed unreachable for longer than the patience."""


def tracking_patience() -> float:
    """Seconds an unreachable tracking server is waited for (``$UNET_SEARCH_TRACKING_PATIENCE_S``,
    default 600), read by the process that starts a run or search and carried to its workers."""
    raw = os.environ.get(PATIENCE_ENV, "").strip()
    if not raw:
        return DEFAULT_PATIENCE_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise UserError(f"{PATIENCE_ENV}={raw!r}: must be a positive number of seconds.")
    return value


def reachable(uri: str, timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether the tracking store answers at all. Any HTTP answer counts (401 and 404 too:
    the server is there); a local store (SQLite, files) always does."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout)
    except requests.RequestException:
        return False
    return True


def _gave_up(uri: str, what: str, down_s: float, patience_s: float) -> TrackingUnavailable:
    return TrackingUnavailable(
        f"MLflow tracking server {uri} unreachable for {down_s:.0f} s ({what}; "
        f"{PATIENCE_ENV}={patience_s:g})"
    )


class Outage:
    """When the tracking server at ``uri`` stopped answering (one per Outbox, one for the
    search driver), what is said when it goes and comes back, and when to give up."""

    def __init__(self, uri: str, patience_s: float) -> None:
        self.uri, self.patience_s = uri, patience_s
        self.since: float | None = None  # time.time() when it was first found away

    def away(self, doing: str) -> None:
        if self.since is None:
            self.since = time.time()
            print(
                f"MLflow tracking server {self.uri} unreachable; {doing} (waiting up to "
                f"{self.patience_s:.0f} s)",
                flush=True,
            )

    def back(self, done: str) -> None:
        if self.since is not None:
            print(
                f"MLflow tracking server {self.uri} is back after "
                f"{time.time() - self.since:.0f} s; {done}",
                flush=True,
            )
            self.since = None

    def down_for(self) -> float:
        """Seconds since the server stopped answering (0 while it answers)."""
        return 0.0 if self.since is None else time.time() - self.since

    def check(self, what: str) -> None:
        """TrackingUnavailable once the server has been away for the patience."""
        down = self.down_for()
        if down >= self.patience_s:
            raise _gave_up(self.uri, what, down, self.patience_s)


def _try(uri: str, call: Any) -> tuple[bool, Any]:
    """(True, ``call()``), or (False, None) when it failed because the server went away;
    a failure while the server answers is a real error and raised."""
    try:
        return True, call()
    except Exception:
        if reachable(uri):
            raise
        return False, None


def require_reachable(uri: str) -> None:
    """At a command's start: a clear error at once when the server is not there."""
    if not reachable(uri):
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) does not answer; start it "
            "or point MLFLOW_TRACKING_URI at a running one."
        )


def with_patience(uri: str, what: str, call: Any, patience_s: float) -> Any:
    """``call()``, waited for while the tracking server is unreachable (up to ``patience_s``
    seconds of silence, then TrackingUnavailable)."""
    start = time.monotonic()
    delay = 1.0
    warned = False
    while True:
        if reachable(uri):
            sent, result = _try(uri, call)
            if sent:
                return result
        down = time.monotonic() - start
        if down >= patience_s:
            raise _gave_up(uri, what, down, patience_s)
        if not warned:
            print(
                f"MLflow tracking server {uri} unreachable ({what}); waiting up to "
                f"{patience_s:.0f} s for it",
                flush=True,
            )
            warned = True
        time.sleep(min(delay, patience_s - down))
        delay = min(2 * delay, 15.0)


class Outbox:
    """One run's logging, kept in order until the tracking server has it.

    ``log_*`` queue and then send what they can: while the server is unreachable nothing
    blocks (a trial keeps training) and the queue grows. :meth:`pending` / :meth:`restore`
    carry the queue through a checkpoint, so a trial restarted from one sends what its
    predecessor could not. :meth:`drain` waits until everything is sent, and :meth:`check`
    raises TrackingUnavailable once the server has been silent for ``patience_s``. A metric
    keeps the timestamp of its epoch, so a late or repeated send stores the same point."""

    def __init__(self, uri: str, run_id: str, patience_s: float = DEFAULT_PATIENCE_S) -> None:
        self.uri, self.run_id, self.patience_s = uri, run_id, patience_s
        self._queue: list[dict[str, Any]] = []
        self._outage = Outage(uri, patience_s)

    def pending(self) -> list[dict[str, Any]]:
        """The unsent items (JSON-serializable)."""
        return list(self._queue)

    def restore(self, items: Sequence[Mapping[str, Any]]) -> None:
        """Put items saved by :meth:`pending` (in an earlier process) first in the queue."""
        self._queue[:0] = [dict(item) for item in items]

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        values = {k: float(v) for k, v in metrics.items()}
        self._put({"kind": "metrics", "step": step, "ts": now_ms(), "values": values})

    def log_params(self, params: Mapping[str, Any], now: bool = True) -> None:
        """``now=False``: queue only (sent with the next call that sends)."""
        values = {k: param_value(v) for k, v in params.items()}
        self._put({"kind": "params", "values": values}, now)

    def set_tags(self, tags: Mapping[str, Any], now: bool = True) -> None:
        self._put({"kind": "tags", "values": {k: str(v) for k, v in tags.items()}}, now)

    def log_image(self, image: Any, key: str, step: int) -> None:
        """``image``: (H, W, 3) uint8 array, kept as PNG until sent."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        png = base64.b64encode(buffer.getvalue()).decode("ascii")
        self._put({"kind": "image", "key": key, "step": step, "ts": now_ms(), "png": png})

    def _put(self, item: dict[str, Any], now: bool = True) -> None:
        self._queue.append(item)
        if now:
            self.flush()

    def _send(self, item: Mapping[str, Any]) -> None:
        kind, values = item["kind"], item.get("values", {})
        if kind == "metrics":
            log_metrics(self.uri, self.run_id, values, item["step"], item["ts"])
        elif kind == "params":
            log_params(self.uri, self.run_id, values)
        elif kind == "tags":
            set_tags(self.uri, self.run_id, values)
        elif kind == "image":
            from PIL import Image

            picture = Image.open(io.BytesIO(base64.b64decode(item["png"])))
            log_image(self.uri, self.run_id, picture, item["key"], item["step"], item["ts"])
        else:
            raise ValueError(f"unknown outbox item {kind!r}")

    def flush(self) -> bool:
        """Send what is queued, in order; False (nothing lost) while the server is away."""
        if not self._queue:
            return True
        doing = f"run {self.run_id} queues its logging and keeps training"
        if not reachable(self.uri):
            self._outage.away(doing)
            return False
        while self._queue:
            sent, _ = _try(self.uri, lambda: self._send(self._queue[0]))
            if not sent:
                self._outage.away(doing)
                return False
            self._queue.pop(0)
        self._outage.back("the queued logging was sent")
        return True

    def check(self) -> None:
        """TrackingUnavailable once the server has been away for longer than the patience."""
        self._outage.check(f"run {self.run_id}, {len(self._queue)} items unsent")

    def drain(self) -> None:
        """Block until everything queued is sent, or TrackingUnavailable."""
        while not self.flush():
            self.check()
            time.sleep(min(5.0, max(0.5, self.patience_s - self._outage.down_for())))
