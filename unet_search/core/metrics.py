"""The one metrics table: every validation metric a run reports, its direction, whether a
search may optimize it, and its held-out test counterpart. Read by the engine (kept epoch),
the space (``search.metric``), tracking (ranking), the registry gate and the report."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Metric", "METRICS", "VAL_METRICS"]


@dataclass(frozen=True)
class Metric:
    """A validation metric every run reports (the one table of them: engine, spaces,
    tracking, registry and report read it)."""

    maximize: bool  # larger is better
    searchable: bool = True  # a search may rank its trials by it (`search.metric`)
    test: str | None = None  # its value on the held-out test images, named so

    @property
    def mode(self) -> str:
        return "max" if self.maximize else "min"


METRICS: dict[str, Metric] = {
    "val_dice": Metric(True, test="test_dice"),
    "val_iou": Metric(True, test="test_iou"),
    # needs the DSB score every epoch (dsb_every 1) on at most 2 classes: spaces, RunConfig
    "val_dsb_score": Metric(True, test="test_dsb_score"),
    "val_loss": Metric(False),  # no test counterpart: the gate compares validation values
    "val_soft_dice": Metric(True, searchable=False),  # ASHA's tie-break, an early-stop option
}


VAL_METRICS = tuple(METRICS)
