"""Every rule of a space file, each error naming the file, the key, the rule and the value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from space_files import QUICK, small_space, write_space

from unet_search.core.errors import ConfigError
from unet_search.space.load import load_space


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"colour": "red"}, "`colour` is not a valid key"),
        ({"search__num_sample": 3}, "`search.num_sample` is not a valid key"),
        ({"search__num_samples": "3"}, "`search.num_samples` must be int, but got '3'"),
        ({"search__num_samples": 0}, "`search.num_samples` must be in [1, 100000], but got 0"),
        ({"search__seed": True}, "`search.seed` must be int, but got True"),
        ({"search__time_budget_s": -5}, "`search.time_budget_s` must be > 0, but got -5"),
        ({"search__max_concurrent_trials": 0}, "`search.max_concurrent_trials` must be >= 1"),
        (
            {"search__scheduler": {"reduction_factor": 2.5}},
            "`search.scheduler.reduction_factor` must be int, but got 2.5",
        ),
        (
            {"search__scheduler": {"grace": 1}},
            "`search.scheduler.grace` is not a valid key; valid keys are ['grace_period',",
        ),
        ({"search__metric": "dice"}, "`search.metric` must be one of"),
        ({"search__mode": "min"}, "`search.mode` must be 'max' for val_dice"),
        ({"search__baseline": "keras"}, "`search.baseline` must be `none` or a preset"),
        ({"search__sampler": "grid"}, "`search.sampler` must be one of ['tpe', 'random']"),
        ({"search__startup_trials": -1}, "`search.startup_trials` must be >= 0, but got -1"),
        (
            {"search__scheduler": {"type": "hyperband"}},
            "must be one of ['asha', 'asha_stopping', 'fifo']",
        ),
        ({"search__scheduler": {"grace_period": 5}}, "must be <= epochs (2)"),
        ({"search__scheduler": {"max_t": 9}}, "`search.scheduler.max_t` must be null or `epochs`"),
        ({"search__scheduler": {"max_t": 1}}, "no trial would finish its training"),
        (
            {"search__metric": "val_dsb_score", "fixed__dsb_every": 0},
            "but dsb_every is 0, num_classes 1 in a trial",
        ),
        (
            {
                "search__metric": "val_dsb_score",
                "params__dsb_every": {"type": "choice", "values": [1, 2]},
            },
            "but dsb_every is 2, num_classes 1 in a trial",
        ),
        (
            {"search__metric": "val_dsb_score", "fixed__num_classes": 3},
            "num_classes 3 in a trial",
        ),
        (
            {
                "search__metric": "val_loss",
                "search__mode": "min",
                "params__dice_weight": {"type": "uniform", "low": 0, "high": 1},
            },
            "cannot be val_loss while `params.dice_weight` is searched",
        ),
        (
            {"params__depth": {"type": "int", "low": 4, "high": 3}},
            "`params.depth` needs `low <= high`, but got [4, 3]",
        ),
        (
            {"params__lr": {"type": "loguniform", "low": 0, "high": 1}},
            "`params.lr.low` must be > 0 on a log scale (loguniform), but got 0",
        ),
        (
            {"params__lr": {"type": "uniform", "low": "a", "high": 1}},
            "`params.lr.low` must be int or float, but got 'a'",
        ),
        (
            {"params__lr": {"type": "loguniform", "low": 0.1, "high": 1, "step": 0.1}},
            "`params.lr.step` cannot be combined with a log scale, but got 0.1",
        ),
        (
            {"params__lr": {"type": "uniform", "low": 0.1, "high": 1, "step": -1}},
            "`params.lr.step` must be a positive number, but got -1",
        ),
        ({"params__encoder": {"type": "choice"}}, "`params.encoder.values` is required"),
        (
            {"params__encoder": {"type": "choice", "values": ["none"], "low": 1}},
            "`params.encoder.low` is not a valid key here; valid keys are ['type', 'values'",
        ),
        (
            {"params__depth": {"type": "int", "low": 2.5, "high": 4}},
            "must be an integer for type int",
        ),
        ({"params__encoder": {"type": "choice", "values": []}}, "must be a non-empty list"),
        ({"params__encoder": {"type": "choice", "values": ["none", "none"]}}, "must not repeat"),
        (
            {"params__depth": {"type": "normal", "low": 2, "high": 4}},
            "`params.depth.type` must be one of ['choice', 'int', 'uniform', 'loguniform'], "
            "but got 'normal'.",
        ),
        (  # the type is the union's tag: without it no parameter model applies
            {"params__depth": {"low": 2, "high": 4}},
            "`params.depth.type` must be one of ['choice', 'int', 'uniform', 'loguniform'], "
            "but got None.",
        ),
        (
            {"params__depth": {"type": "int", "low": 2, "high": 4, "mean": 3}},
            "`params.depth.mean` is not a valid key",
        ),
        (
            {
                "params__dropout": {
                    "type": "uniform",
                    "low": 0,
                    "high": 1,
                    "when": {"arch": "unet"},
                }
            },
            "names `arch`, which is not a parameter defined before it",
        ),
        (
            {
                "params__dropout": {
                    "type": "uniform",
                    "low": 0,
                    "high": 0.5,
                    "when": {"encoder": "vgg"},
                }
            },
            "must use values `encoder` can take",
        ),
        (
            {"params__epochz": {"type": "int", "low": 1, "high": 2}},
            "`params.epochz` is not a run-config key",
        ),
        ({"params__image_size": {"type": "int", "low": 32, "high": 64}}, "is also in `fixed`"),
        ({"params__dropout": {"type": "uniform", "low": 0, "high": 1.5}}, "value 1.5 is invalid"),
        (
            {"params__upsampling": {"type": "choice", "values": ["transpose", "nearest"]}},
            "the combination {encoder: 'resnet18', upsampling: 'transpose'",
        ),
        ({"search__compute": {}}, "`search.compute` needs `epochs` or `hours` (or both)"),
        ({"search__compute": {"epochs": 0}}, "`search.compute.epochs` must be >= 1, but got 0"),
        ({"search__compute": {"epoch": 9}}, "`search.compute.epoch` is not a valid key"),
        (
            {"search__compute": {"epochs": 3}, "search__final_fit": 0.6},
            "`search.compute.epochs` must leave the exploring trials (0.4 of it, 1 epochs) at "
            "least one whole trial (`epochs` = 2), but got 3",
        ),
        (
            {"search__compute": {"hours": 1}, "search__time_budget_s": 60},
            "`search.compute.hours` cannot be combined with `search.time_budget_s`",
        ),
        ({"search__final_fit": 1.0}, "`search.final_fit` must be in [0, 0.9], but got 1.0"),
        ({"search__final_fit_start": "warm"}, "`search.final_fit_start` must be one of"),
        ({"fixed__epochz": 3}, "unknown key `epochz`"),
        ({"fixed__gpus_per_worker": -1}, "`train.gpus_per_worker` must be >= 0"),
        (
            {"search__objectives": [{"metric": "val_dice"}, {"metric": "inference_ms"}]},
            "`search.objectives` replace `search.metric`: give one or the other",
        ),
        (
            {"search__metric": None, "search__objectives": [{"metric": "num_parameters"}]},
            "`search.objectives[0].metric` must be one of ['val_ap50', 'val_dice', "
            "'val_dsb_score', 'val_iou', 'val_loss']: the first objective is the search metric",
        ),
        (
            {
                "search__metric": None,
                "search__objectives": [
                    {"metric": "val_dice"},
                    {"metric": "inference_ms", "mode": "max"},
                ],
            },
            "`search.objectives[1].mode` must be 'min' for inference_ms, but got 'max'",
        ),
        ({"search__pick": "knee"}, "`search.pick` `knee` needs two or more `objectives`"),
        (
            {
                "search__metric": None,
                "search__objectives": [{"metric": "val_dice"}, {"metric": "val_iou"}],
                "search__scheduler": {"type": "asha_stopping"},
            },
            "`search.scheduler.type` `asha_stopping` ranks one metric",
        ),
        (
            {"search__constraints": [{"metric": "val_dice", "max": 1}]},
            "`search.constraints[0].metric` must be one of ['num_parameters', 'inference_ms']",
        ),
        (
            {"search__constraints": [{"metric": "inference_ms", "max": 0}]},
            "`search.constraints[0].max` must be > 0, but got 0",
        ),
        ({"search__constraints": 5}, "`search.constraints` must be a list of mappings"),
    ],
)
def test_every_validation_rule_names_the_key(
    tmp_path: Path, overrides: dict, fragment: str
) -> None:
    path = write_space(tmp_path, small_space(**overrides))
    with pytest.raises(ConfigError) as err:
        load_space(path)
    assert str(path) in str(err.value)
    assert fragment in str(err.value)


def test_a_space_whose_metric_can_rank_its_trials_loads(tmp_path: Path) -> None:
    dsb = load_space(write_space(tmp_path, small_space(search__metric="val_dsb_score")))
    assert dsb.base_config().train.early_stop_metric == "val_dsb_score"
    loss = load_space(
        write_space(tmp_path, small_space(search__metric="val_loss", search__mode="min"))
    )
    assert loss.settings.metric == "val_loss"  # the loss is fixed: one objective
    every = load_space(write_space(tmp_path, small_space(search__scheduler={"max_t": 2})))
    assert every.settings.scheduler.max_t == 2


def test_malformed_yaml_reports_its_line(tmp_path: Path) -> None:
    path = write_space(tmp_path, "name: t\nparams:\n  depth: {type: int, low: 2\nsearch: {}\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+"):
        load_space(path)


def test_a_searched_patch_is_combined_with_the_model_rules(tmp_path: Path) -> None:
    """A transformer bottleneck's token limit (and 2**depth) read the patch: a searched patch
    size is walked with the model settings, so a trial could never fail on it mid-search."""
    raw = small_space(
        fixed={"epochs": 2, "bottleneck": "transformer"},
        params={
            "patch_size": {"type": "choice", "values": [128, 256, 512]},
            "depth": {"type": "int", "low": 3, "high": 5},  # alone, each value passes
        },
    )
    with pytest.raises(ConfigError) as err:
        load_space(write_space(tmp_path, raw))
    assert "the combination {patch_size: 512, depth: 3} is impossible" in str(err.value)
    assert "'transformer' holds at most 1024 tokens" in str(err.value)
    raw["params"]["patch_size"]["values"] = [128, 256]  # 16x16 and 32x32 tokens
    assert load_space(write_space(tmp_path, raw)).params[0].values == (128, 256)


def test_numbers_in_a_space_are_read_as_people_write_them(tmp_path: Path) -> None:
    text = yaml.safe_dump(small_space(), sort_keys=False).replace("0.0001", "1e-4")
    assert "low: 1e-4" in text  # YAML 1.1 (PyYAML) would read a string
    spec = load_space(write_space(tmp_path, text))
    (lr,) = [p for p in spec.params if p.name == "lr"]
    assert lr.low == 1e-4 and isinstance(lr.low, float)
    assert load_space(QUICK, ["lr=3e-3"]).base_config().optim.lr == 3e-3
