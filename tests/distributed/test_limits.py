"""What a trial measures before its first epoch and the limits it keeps (no Ray)."""

from __future__ import annotations

import torch

from unet_search.core.config import RunConfig
from unet_search.distributed.limits import Limits, measure
from unet_search.models.build import build_model, count_parameters


def test_the_limits_a_measurement_breaks_are_said_with_both_numbers() -> None:
    limits = Limits((64, 64), (("num_parameters", 5e6), ("inference_ms", 50.0)))
    assert limits.broken({"num_parameters": 6.1e6, "inference_ms": 12.0}) == [
        "num_parameters 6.1e+06 > 5e+06"
    ]
    assert limits.broken({"num_parameters": 1e6, "inference_ms": 50.0}) == []  # at: kept
    assert len(limits.broken({"num_parameters": 5e7, "inference_ms": 51.0})) == 2
    assert Limits((64, 64)).broken({"num_parameters": 1e12}) == []  # no constraints


def test_rank_0_measures_the_untrained_model_and_leaves_it_training() -> None:
    cfg = RunConfig.from_dict({"base_filters": 4, "depth": 2, "patch_size": 32})
    model = build_model(cfg.model, 1)
    found = measure(Limits((48, 48)), model, cfg, torch.device("cpu"), rank=0)
    assert found["num_parameters"] == count_parameters(model) > 1000
    assert found["inference_ms"] > 0.0
    assert model.training  # measured in eval mode, handed back to training
