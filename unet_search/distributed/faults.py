"""Fault injection for tests and drills: ``UNET_SEARCH_FAULT`` makes a chosen worker fail at
a chosen epoch, as a killed node would."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from unet_search.core.config import RunConfig

__all__ = ["FAULT_ENV", "maybe_fail"]


FAULT_ENV = "UNET_SEARCH_FAULT"


def maybe_fail(epoch: int, rank: int, world: int, cfg: RunConfig, spec: str | None) -> None:
    """Fault injection for tests, ``UNET_SEARCH_FAULT`` (read by the process that starts the
    run or search, and passed to its workers with their config):

    - ``"epoch=N,marker=PATH[,after_s=S]"`` kills the last rank once, S seconds (default 3)
      after epoch N's report, i.e. while the other ranks are inside epoch N+1. The marker
      file records that it happened.
    - ``"epoch=N,raise=oom[,when=KEY:VALUE]"`` raises a (simulated) out-of-memory error
      right after epoch N's report, in every run whose config has KEY = VALUE (e.g.
      ``when=base_filters:8``), or in every run without ``when``.
    - ``"epoch=N,hold=PATH[,when=KEY:VALUE]"`` holds the run right after epoch N's report
      (its checkpoint kept) until the file PATH exists: a search can be killed at a chosen
      point of a chosen run (``when=epochs:4``: the run whose ``epochs`` is 4).

    Ray Train V2 registers a reported checkpoint when its controller next polls the workers
    (every 2 s), so a failure within 2 s of a report can lose that report: the epoch is then
    re-run from the previous checkpoint (and logged again at the same MLflow step)."""
    if not spec or rank != world - 1:
        return
    fields = dict(part.split("=", 1) for part in spec.split(","))
    if int(fields["epoch"]) != epoch:
        return
    key, _, value = fields.get("when", ":").partition(":")
    applies = not key or str(cfg.flat().get(key)) == value
    if fields.get("raise") == "oom":
        if applies:
            raise torch.OutOfMemoryError(
                f"simulated out of memory after epoch {epoch} (fault injection {FAULT_ENV})"
            )
        return
    if "hold" in fields:
        while applies and not Path(fields["hold"]).exists():
            time.sleep(0.2)
        return
    marker = Path(fields["marker"])
    if not marker.exists():
        time.sleep(float(fields.get("after_s", 3.0)))
        marker.write_text(f"worker rank {rank} killed after epoch {epoch}\n", encoding="utf-8")
        os._exit(1)
