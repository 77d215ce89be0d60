"""The metrics table and the words built on it (no torch, Ray or MLflow)."""

from __future__ import annotations

from unet_search.core.metrics import (
    INSTANCE_METRICS,
    METRICS,
    best_key,
    better,
    dsb_rule,
    kept,
    sign,
)


def test_every_searchable_metric_but_the_loss_has_a_test_counterpart_named_alike() -> None:
    assert set(INSTANCE_METRICS) <= set(METRICS)
    for name, metric in METRICS.items():
        if metric.test is not None:
            assert metric.test == "test_" + name.removeprefix("val_")
    assert [n for n, m in METRICS.items() if m.searchable and m.test is None] == ["val_loss"]
    assert METRICS["val_loss"].mode == "min" and METRICS["val_dice"].mode == "max"


def test_the_kept_weights_values_are_the_table_metrics_under_their_best_key() -> None:
    assert best_key("val_dice") == "best_val_dice"
    scores = {"val_dice": 0.8, "val_loss": 0.3, "train_loss": 0.2, "epoch": 4.0}
    assert kept(scores) == {"best_val_dice": 0.8, "best_val_loss": 0.3}


def test_better_is_strict_and_follows_the_mode() -> None:
    assert better("max", 0.5, None) and better("min", 0.5, None)  # nothing yet
    assert better("max", 0.6, 0.5) and not better("max", 0.5, 0.5)  # a tie does not
    assert better("min", 0.4, 0.5) and not better("min", 0.6, 0.5)
    assert sign("max") == 1.0 and sign("min") == -1.0


def test_instance_metrics_rank_runs_only_when_scored_every_epoch_of_a_binary_task() -> None:
    assert dsb_rule(1, 2) is None
    assert "dsb_every is 2" in (dsb_rule(2, 2) or "")
    assert "num_classes 3" in (dsb_rule(1, 3, "val_ap50") or "")
    assert (dsb_rule(1, 3, "val_ap50") or "").startswith("val_ap50 needs")
