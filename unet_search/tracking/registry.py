"""MLflow Model Registry: the `champion` gate, the current champion, downloading a model.

Logging a model and registering it is :mod:`unet_search.serve.packaging`.

The logged model holds ``model.safetensors`` + ``model_config.json`` (weights and build
config, incl. preprocessing) and is served through ``pyfunc_model.py`` (models-from-code, no
pickle), with the ``unet_search`` package shipped as code. The alias ``champion`` moves to a
new version only when it beats the current champion on the same data, split, metric and
mode (on the held-out test images when both have test values); otherwise the new version
gets ``challenger``. The read-decide-set runs under a lock held in the registry itself.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from unet_search.core.errors import UserError
from unet_search.core.metrics import METRICS, better
from unet_search.core.tags import PREFIX as TAG_PREFIX
from unet_search.core.tags import (
    TAG_CONSTRAINTS,
    TAG_DATA,
    TAG_DECISION,
    TAG_FINGERPRINT,
    TAG_METRIC,
    TAG_MODE,
    TAG_OBJECTIVES,
    TAG_RUN_ID,
    TAG_SEARCH_ID,
    TAG_SPLIT,
    TAG_VALUE,
)

__all__ = [
    "CHALLENGER",
    "Champion",
    "champion",
    "CHAMPION",
    "champion_lock",
    "download_model",
    "fluent_tracking_uri",
    "LOCK_SUFFIX",
    "missing_alias",
    "promote",
    "Registration",
    "registered_versions",
    "RegisteredVersion",
]


CHAMPION, CHALLENGER = "champion", "challenger"


LOCK_SUFFIX = ".champion-lock"


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    alias: str  # champion | challenger
    previous_version: str | None
    previous_value: float | None
    reason: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


def _differences(new: Mapping[str, str], old: Mapping[str, str]) -> list[str]:
    """What makes two versions' numbers incomparable: the metric and mode that chose them,
    the data, the split (each named), or, for versions that do not record data and split
    apart (older ones, or registered by hand), their fingerprints."""
    out = []
    if (old.get(TAG_METRIC), old.get(TAG_MODE)) != (new.get(TAG_METRIC), new.get(TAG_MODE)):
        out.append(
            f"was chosen by {old.get(TAG_METRIC)} ({old.get(TAG_MODE)}), this model by "
            f"{new.get(TAG_METRIC)} ({new.get(TAG_MODE)})"
        )
    for tag, what in ((TAG_OBJECTIVES, "objectives"), (TAG_CONSTRAINTS, "limits")):
        if old.get(tag, "") != new.get(tag, ""):
            out.append(
                f"was chosen with {what} {old.get(tag) or 'none'}, this model with "
                f"{new.get(tag) or 'none'}"
            )
    if all(tag in tags for tag in (TAG_DATA, TAG_SPLIT) for tags in (new, old)):
        if old[TAG_DATA] != new[TAG_DATA]:
            out.append(f"was trained on other data (data {old[TAG_DATA]} != {new[TAG_DATA]})")
        if old[TAG_SPLIT] != new[TAG_SPLIT]:
            out.append(f"was split otherwise ({old[TAG_SPLIT]}; this model {new[TAG_SPLIT]})")
    elif old.get(TAG_FINGERPRINT) != new.get(TAG_FINGERPRINT):
        out.append(
            f"was trained on other data or split (fingerprint {old.get(TAG_FINGERPRINT)} != "
            f"{new.get(TAG_FINGERPRINT)})"
        )
    return out


def _compared(new: Mapping[str, str], old: Mapping[str, str]) -> tuple[str, float, float]:
    """The number two comparable versions are judged by: the metric's value on the
    held-out test images when both have it (the one use of the test split), else the
    validation value that chose them."""
    metric = new[TAG_METRIC]
    test = METRICS[metric].test if metric in METRICS else None
    if test and TAG_PREFIX + test in new and TAG_PREFIX + test in old:
        return test, float(new[TAG_PREFIX + test]), float(old[TAG_PREFIX + test])
    return metric, float(new[TAG_VALUE]), float(old.get(TAG_VALUE, "nan"))


def _decide(
    new: Mapping[str, str], current: ModelVersion | None, veto: str | None = None
) -> tuple[str, float | None, str]:
    """(alias, the champion's compared value, reason) for a version tagged ``new``; a
    ``veto`` (why it must not be champion) makes it a challenger whatever the champion."""
    if veto is not None:
        value = None if current is None else float(current.tags.get(TAG_VALUE, "nan"))
        return CHALLENGER, value, veto
    if current is None:
        return CHAMPION, None, "no champion yet"
    old, version = current.tags, current.version
    differ = _differences(new, old)
    if differ:
        value = float(old.get(TAG_VALUE, "nan"))
        return CHALLENGER, value, f"champion v{version} {'; '.join(differ)}: not comparable"
    key, value, old_value = _compared(new, old)
    if better(new[TAG_MODE], value, old_value):
        return (
            CHAMPION,
            old_value,
            f"{key} {value:.4f} beats champion v{version}'s {old_value:.4f}",
        )
    return (
        CHALLENGER,
        old_value,
        f"{key} {value:.4f} does not beat champion v{version}'s {old_value:.4f}",
    )


@contextlib.contextmanager
def champion_lock(
    client: MlflowClient, name: str, wait_s: float = 300.0, stale_s: float = 120.0
) -> Iterator[None]:
    """Held while a registration reads the champion, decides and moves the alias: MLflow's
    aliases have no compare-and-set, so two searches ending at the same moment would both
    compare with the old champion and the later write would win, better or not. The lock is
    a registered model named ``<name>.champion-lock``, which the store creates at most once
    (a unique name), so it holds across processes and machines sharing the registry. A lock
    older than ``stale_s`` (its holder died inside the few calls it guards) is broken."""
    lock = f"{name}{LOCK_SUFFIX}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.create_registered_model(
                lock,
                description="unet-search: held while the champion of "
                f"{name} is decided (seconds); safe to delete when older than {stale_s:.0f} s",
            )
            break
        except MlflowException as err:
            # held; or released while the store looked the holder up
            if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                raise
        try:
            held = client.get_registered_model(lock)
        except MlflowException:
            continue  # released in between: try again at once
        if time.time() - held.creation_timestamp / 1000 > stale_s:
            with contextlib.suppress(MlflowException):
                client.delete_registered_model(lock)
            continue
        if time.monotonic() > deadline:
            raise UserError(
                f"registered model {lock}: another registration has held the champion lock "
                f"for over {wait_s:.0f} s; no alias was moved (delete the lock if no search is "
                "registering)."
            )
        time.sleep(0.05 + 0.1 * random.random())
    try:
        yield
    finally:
        with contextlib.suppress(MlflowException):
            client.delete_registered_model(lock)


def promote(
    client: MlflowClient, name: str, version: str, veto: str | None = None
) -> Registration:
    """Give version ``version`` of ``name`` the alias ``champion`` if it beats the current
    champion on the same data, split, metric and mode (their test values when both have
    them), else ``challenger``: read, decided and set under :func:`champion_lock`. With a
    ``veto`` (the reason) it is a challenger, the first version of a name too."""
    new = client.get_model_version(name, version).tags
    with champion_lock(client, name):
        try:
            current: ModelVersion | None = client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:
            current = None
        alias, old_value, reason = _decide(new, current, veto)
        client.set_registered_model_alias(name, alias, version)
        client.set_model_version_tag(name, version, TAG_DECISION, reason)  # for `best`
    previous = None if current is None else str(current.version)
    return Registration(name, str(version), alias, previous, old_value, reason)


@contextlib.contextmanager
def fluent_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API pointed at ``uri``, and the process's setting restored after:
    ``mlflow.set_tracking_uri`` also exports MLFLOW_TRACKING_URI, so without the restore every
    later search or run in this process would log to this store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # type: ignore[arg-type]  # None: unset again


@dataclass(frozen=True)
class Champion:
    """The version the ``champion`` alias points at, and where it came from."""

    name: str
    version: str
    value: float | None
    metric: str
    search_id: str
    trial_run_id: str


def champion(tracking_uri: str, name: str) -> Champion | None:
    """The current champion of registered model ``name``, or None (no such model/alias)."""
    try:
        mv = MlflowClient(tracking_uri).get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    tags = mv.tags
    value = tags.get(TAG_VALUE)
    return Champion(
        name,
        str(mv.version),
        None if value is None else float(value),
        tags.get(TAG_METRIC, ""),
        tags.get(TAG_SEARCH_ID, ""),
        tags.get(TAG_RUN_ID, ""),
    )


@dataclass(frozen=True)
class RegisteredVersion:
    """One version of a registered model as ``best`` shows it."""

    version: str
    aliases: tuple[str, ...]
    search_id: str
    metric: str
    value: float | None  # its validation value of ``metric``
    test: dict[str, float]  # held-out test scores (test_dice, ...)
    reason: str  # why the gate gave it its alias ("" for versions registered before the tag)


def registered_versions(tracking_uri: str, name: str) -> list[RegisteredVersion]:
    """The versions of registered model ``name``, newest first (none: an empty list)."""
    client = MlflowClient(tracking_uri)
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException:
        return []
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    rows = []
    for mv in client.search_model_versions(f"name = '{name}'"):
        tags = mv.tags
        value = tags.get(TAG_VALUE)
        rows.append(
            RegisteredVersion(
                str(mv.version),
                tuple(sorted(by_version.get(str(mv.version), []))),
                tags.get(TAG_SEARCH_ID, ""),
                tags.get(TAG_METRIC, ""),
                None if value is None else float(value),
                {
                    key.removeprefix(TAG_PREFIX): float(v)
                    for key, v in tags.items()
                    if key.startswith(TAG_PREFIX + "test_")
                },
                tags.get(TAG_DECISION, ""),
            )
        )
    return sorted(rows, key=lambda r: -int(r.version))


def missing_alias(tracking_uri: str, name: str, alias: str) -> str:
    """Why ``models:/name@alias`` does not resolve, and the aliases that would."""
    versions = registered_versions(tracking_uri, name)
    if not versions:
        return f"there is no registered model named {name!r} in {tracking_uri}"
    held = [v for v in versions if v.aliases]
    if not held:
        return f"{name} has no @{alias} and no alias at all (versions {versions[0].version}..1)"
    said = "; ".join(
        f"v{v.version} is {' and '.join('@' + a for a in v.aliases)}"
        + (f" ({v.reason})" if v.reason else "")
        for v in held
    )
    return f"{name} has no @{alias}: {said}; use models:/{name}@{held[0].aliases[0]}"


def download_model(uri: str, tracking_uri: str | None = None) -> Path:
    """Download a model URI (``models:/`` and ``runs:/`` resolved in ``tracking_uri``, used as
    the registry too) to a temporary folder; a clear error if it does not resolve."""
    target = Path(tempfile.mkdtemp(prefix="unet-search-model-"))
    # MLflow resolves a models:/ URI in the process-wide registry only (its registry_uri
    # argument does not reach the lookup): set it for the call, then restore it.
    store = contextlib.nullcontext() if tracking_uri is None else fluent_tracking_uri(tracking_uri)
    try:
        with store:
            return Path(
                mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target))
            )
    except MlflowException as err:
        name, at, alias = uri.removeprefix("models:/").partition("@")
        if uri.startswith("models:/") and at:
            why = missing_alias(tracking_uri or mlflow.get_tracking_uri(), name, alias)
            raise UserError(f"{uri}: cannot be loaded: {why}.") from None
        raise UserError(f"{uri}: cannot be loaded ({err.message})") from None
