"""The one metrics table: every validation metric a run reports, its direction, whether a
search may optimize it, and its held-out test counterpart. Read by the engine (kept epoch),
the space (``search.metric``), tracking (ranking), the registry gate and the report."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "best_key",
    "better",
    "dsb_rule",
    "INSTANCE_METRICS",
    "kept",
    "Metric",
    "METRICS",
    "sign",
    "VAL_METRICS",
]


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
    # needs the DSB score every epoch on at most 2 classes (dsb_rule: RunConfig, spaces)
    "val_dsb_score": Metric(True, test="test_dsb_score"),
    # instances matched at IoU 0.5: TP / (TP + FP + FN), computed with the DSB score
    "val_ap50": Metric(True, test="test_ap50"),
    "val_loss": Metric(False),  # no test counterpart: the gate compares validation values
    "val_soft_dice": Metric(True, searchable=False),  # ASHA's tie-break, an early-stop option
}


VAL_METRICS = tuple(METRICS)
# Scored on instances, every `dsb_every` epochs (dsb_rule says when they can rank runs).
INSTANCE_METRICS = ("val_dsb_score", "val_ap50")


def best_key(metric: str) -> str:
    """The result and MLflow metric key of ``metric``'s value for the weights a run keeps
    (its best epoch so far): ``best_val_dice``. Tune, ASHA, Optuna, the report and the
    parent run's summary all read it under this name."""
    return f"best_{metric}"


def kept(scores: dict[str, float]) -> dict[str, float]:
    """``scores``' table metrics under their :func:`best_key` names (a run's kept weights)."""
    return {best_key(k): v for k, v in scores.items() if k in METRICS}


def sign(mode: str) -> float:
    """+1 for ``mode`` max, -1 for min: a signed value is larger when it is better."""
    return 1.0 if mode == "max" else -1.0


def better(mode: str, new: float, old: float | None) -> bool:
    """Whether ``new`` beats ``old`` (None: nothing yet) under ``mode`` (max | min); a tie
    does not."""
    return old is None or sign(mode) * new > sign(mode) * old


def dsb_rule(dsb_every: int, num_classes: int, metric: str = "val_dsb_score") -> str | None:
    """Why a run with these settings cannot be ranked by an instance metric
    (:data:`INSTANCE_METRICS`, as its early-stop metric or its search's metric), or None: the
    kept epoch and the rungs compare every epoch, so the instance scores must be there every
    epoch (``dsb_every: 1``), and they score instances of a binary task (``num_classes`` <=
    2)."""
    if dsb_every == 1 and num_classes <= 2:
        return None
    return (
        f"{metric} needs the instance scores every epoch of a binary task "
        f"(`dsb_every: 1`, `num_classes` <= 2), but dsb_every is {dsb_every}, "
        f"num_classes {num_classes}"
    )
