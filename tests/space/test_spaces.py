from __future__ import annotations

import functools
from dataclasses import replace as dataclass_replace
from pathlib import Path

import optuna
import pytest
import yaml

from unet_search.core.errors import ConfigError
from unet_search.core.tags import TAG_BASELINE, TAG_DEFAULT, TAG_TRIAL_NUMBER
from unet_search.space.load import load_space, make_sampler
from unet_search.space.role import FinalStart, TrialRole
from unet_search.space.settings import SearchSettings
from unet_search.space.spec import SearchSpec

SPACES = sorted(Path(__file__).parents[2].joinpath("search_spaces").glob("*.yaml"))


@functools.cache
def _shipped(path: Path) -> SearchSpec:
    """A shipped space, loaded once for this module (full.yaml walks 40,000 combinations)."""
    return load_space(path)


def _write(tmp_path: Path, raw: dict | str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False))
    return path


def _space(**overrides: object) -> dict:
    raw: dict = {
        "name": "t",
        "fixed": {"image_size": 32, "epochs": 2},
        "params": {
            "encoder": {"type": "choice", "values": ["none", "resnet18"]},
            "upsampling": [
                {"type": "choice", "values": ["transpose"], "when": {"encoder": "none"}},
                {"type": "choice", "values": ["nearest"], "when": {"encoder": ["resnet18"]}},
            ],
            "depth": {"type": "int", "low": 3, "high": 4},
            "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        },
        "search": {"num_samples": 4, "metric": "val_dice"},
    }
    for key, value in overrides.items():
        section, _, leaf = key.partition("__")
        if leaf:
            if value is None:
                raw[section].pop(leaf, None)
            else:
                raw[section][leaf] = value
        else:
            raw[section] = value
    return raw


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_shipped_spaces_are_valid(path: Path) -> None:
    spec = _shipped(path)
    assert spec.name == path.stem
    assert spec.settings.num_samples >= 1
    assert spec.source == path.read_text()


def test_full_space_is_a_real_cluster_search() -> None:
    spec = _shipped(Path(__file__).parents[2] / "search_spaces" / "full.yaml")
    names = {p.name for p in spec.params}
    assert {
        "arch",
        "encoder",
        "depth",
        "base_filters",
        "dropout",
        "upsampling",
        "dice_weight",
        "lr",
        "weight_decay",
        "batch_size",
        "aug_strength",
    } <= names
    assert {"block", "pooling", "bottleneck", "attention", "transformer_layers"} <= names
    archs = {v for p in spec.params if p.name == "arch" for v in p.values}
    assert archs == {"unet", "unetplusplus", "unet3plus"}
    searched = {
        p.name: {v for q in spec.params if q.name == p.name for v in q.values} for p in spec.params
    }
    assert searched["bottleneck"] == {"plain", "dilated", "aspp", "transformer"}
    assert searched["attention"] == {"none", "gate", "scse"}
    assert {"vgg11", "mit_b1", "tu-convnext_tiny", "none"} <= searched["encoder"]
    assert searched["border_weight"] == {0.0, 10.0}  # the original UNet's weight map, or none
    assert spec.settings.num_samples >= 50
    assert spec.base_config().train.gpus_per_worker >= 1


def test_seed_baseline_space_is_the_keras_unet() -> None:
    spec = _shipped(Path(__file__).parents[2] / "search_spaces" / "seed_baseline.yaml")
    cfg = spec.trial({TAG_BASELINE: True}).run
    assert (cfg.model.depth, cfg.model.base_filters, cfg.model.dropout_schedule) == (4, 16, "ramp")
    assert (cfg.data.image_size, cfg.train.batch_size, cfg.train.epochs) == (128, 16, 25)
    assert cfg.loss.loss == "bce" and spec.settings.num_samples == 1


def test_define_by_run_samples_conditionally(tmp_path: Path) -> None:
    spec = load_space(_write(tmp_path, _space()))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    for _ in range(12):
        trial = study.ask()
        constants = spec.define_by_run(trial)
        cfg = spec.trial({**trial.params, **(constants or {})}).run
        expected = "transpose" if cfg.model.encoder == "none" else "nearest"
        assert cfg.model.upsampling == expected
        assert 1e-4 <= cfg.optim.lr <= 1e-2 and cfg.model.depth in (3, 4)
        assert constants == {TAG_TRIAL_NUMBER: trial.number}
        study.tell(trial, 0.5)


def test_the_target_and_the_border_weight_are_searchable(tmp_path: Path) -> None:
    params = {
        "target": {"type": "choice", "values": ["semantic", "boundary"]},
        "loss": {"type": "choice", "values": ["mix", "dice"]},
        "border_weight": {"type": "choice", "values": [0.0, 10.0], "when": {"loss": "mix"}},
    }
    spec = load_space(_write(tmp_path, _space(params=params)))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(1))
    seen = set()
    for _ in range(24):
        trial = study.ask()
        constants = spec.define_by_run(trial)
        cfg = spec.trial({**trial.params, **(constants or {})}).run
        assert cfg.loss.border_weight == trial.params.get("border_weight", 0.0)
        assert cfg.loss.loss == "mix" or cfg.loss.border_weight == 0.0
        seen.add((cfg.data.target, cfg.loss.border_weight, cfg.data.network_classes))
        study.tell(trial, 0.5)
    assert {(t, w) for t, w, _ in seen} == {
        (t, w) for t in ("semantic", "boundary") for w in (0.0, 10.0)
    }
    assert {(t, n) for t, _, n in seen} == {("semantic", 1), ("boundary", 3)}


def test_baseline_trial_samples_nothing_and_keeps_search_budget(tmp_path: Path) -> None:
    spec = load_space(_write(tmp_path, _space()))
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({}, user_attrs={TAG_BASELINE: True})
    trial = study.ask()
    constants = spec.define_by_run(trial)
    assert trial.params == {} and constants and constants[TAG_BASELINE]
    parsed = spec.trial(constants)
    assert parsed.role == TrialRole(trial.number, baseline=True)
    cfg = parsed.run
    assert cfg.model.base_filters == 16 and cfg.model.dropout_schedule == "ramp"
    assert cfg.data.image_size == 32 and cfg.train.epochs == 2  # the search's fixed settings


def test_with_continue_an_exploring_trials_schedule_spans_the_whole_compute(
    tmp_path: Path,
) -> None:
    """``final_fit_start: continue``: exploring trials are the first part of a long run (their
    LR schedule spans ``compute.epochs``); the baseline and the final fit keep their own."""
    search = {"num_samples": 4, "compute": {"epochs": 10}, "final_fit": 0.5}
    sampled = {"encoder": "none", "upsampling:0": "transpose", "lr": 3e-3, "depth": 3}
    for how, span in (("continue", 10), ("kept", 0)):
        raw = _space(search={**search, "final_fit_start": how})
        spec = load_space(_write(tmp_path, raw))
        assert spec.trial({**sampled, **TrialRole(2).keys()}).run.train.schedule_epochs == span
        baseline = spec.trial(TrialRole(0, baseline=True).keys()).run
        assert baseline.train.schedule_epochs == 0
        final = TrialRole(3, final=FinalStart(5, init_checkpoint="c", optimizer=True))
        assert spec.trial({**sampled, **final.keys()}).run.train.schedule_epochs == 0
        assert TrialRole.of(final.keys()) == final


def test_a_final_fit_config_reads_back_its_role_its_start_and_its_own_epochs(
    tmp_path: Path,
) -> None:
    spec = load_space(_write(tmp_path, _space()))
    sampled = {"encoder": "none", "upsampling:0": "transpose", "lr": 3e-3, "depth": 3}
    kept = FinalStart(7, init_checkpoint="/storage/s/t2/checkpoint_000001")
    role = TrialRole(4, default=True, final=kept)
    trial = spec.trial({**sampled, **role.keys()})
    assert trial.role == role and trial.role.final is not None
    assert trial.role.final.init_weights == "/storage/s/t2/checkpoint_000001"
    # The source's searched values, the final fit's own epochs (the space fixes 2).
    assert (trial.run.train.epochs, trial.run.optim.lr, trial.run.model.depth) == (7, 3e-3, 3)
    assert trial.run.model.upsampling == "transpose"
    assert FinalStart(7, init_run="abc").init_weights == "runs:/abc/best_model"
    assert FinalStart(7).init_weights == "scratch"
    assert TrialRole.of({}) == TrialRole() and TrialRole.of(None).final is None


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
    path = _write(tmp_path, _space(**overrides))
    with pytest.raises(ConfigError) as err:
        load_space(path)
    assert str(path) in str(err.value)
    assert fragment in str(err.value)


def test_a_space_whose_metric_can_rank_its_trials_loads(tmp_path: Path) -> None:
    dsb = load_space(_write(tmp_path, _space(search__metric="val_dsb_score")))
    assert dsb.base_config().train.early_stop_metric == "val_dsb_score"
    loss = load_space(_write(tmp_path, _space(search__metric="val_loss", search__mode="min")))
    assert loss.settings.metric == "val_loss"  # the loss is fixed: one objective
    every = load_space(_write(tmp_path, _space(search__scheduler={"max_t": 2})))
    assert every.settings.scheduler.max_t == 2


def test_malformed_yaml_reports_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: t\nparams:\n  depth: {type: int, low: 2\nsearch: {}\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+"):
        load_space(path)


def test_overrides_shrink_a_space(tmp_path: Path) -> None:
    path = _write(tmp_path, _space())
    spec = load_space(
        path, ["epochs=1", "search.num_samples=2", "search.scheduler.grace_period=1"]
    )
    assert spec.base_config().train.epochs == 1
    assert spec.settings.num_samples == 2 and spec.settings.scheduler.grace_period == 1


def test_sampler_setting_picks_a_seeded_optuna_sampler(tmp_path: Path) -> None:
    def settings(**search: object) -> SearchSettings:
        overrides = {f"search__{k}": v for k, v in search.items()}
        return load_space(_write(tmp_path, _space(**overrides))).settings

    def first_lrs(sampler: str, seed: int, **search: object) -> list[float]:
        overrides = {f"search__{k}": v for k, v in search.items()}
        raw = _space(search__sampler=sampler, search__seed=seed, **overrides)
        spec = load_space(_write(tmp_path, raw))
        study = optuna.create_study(direction="maximize", sampler=make_sampler(spec.settings))
        values = []
        for _ in range(3):
            trial = study.ask()
            spec.define_by_run(trial)
            values.append(trial.params["lr"])
            study.tell(trial, 0.5)
        return values

    assert isinstance(make_sampler(settings()), optuna.samplers.TPESampler)  # the default
    assert isinstance(make_sampler(settings(sampler="random")), optuna.samplers.RandomSampler)
    assert first_lrs("random", 3) == first_lrs("random", 3)  # seeded: the same trials again
    assert first_lrs("random", 3) != first_lrs("random", 4)
    # TPE's random start: a quarter of the search, 2 to 10 trials, unless set.
    assert [settings(num_samples=n).tpe_startup_trials for n in (3, 8, 16, 100)] == [2, 2, 4, 10]
    assert settings(num_samples=100, startup_trials=0).tpe_startup_trials == 0
    # The same seeded random start, then TPE models the results from the third trial on.
    early, late = first_lrs("tpe", 5, startup_trials=2), first_lrs("tpe", 5, startup_trials=10)
    assert early[:2] == late[:2] and early[2] != late[2]


def test_a_searched_patch_is_combined_with_the_model_rules(tmp_path: Path) -> None:
    """A transformer bottleneck's token limit (and 2**depth) read the patch: a searched patch
    size is walked with the model settings, so a trial could never fail on it mid-search."""
    raw = _space(
        fixed={"epochs": 2, "bottleneck": "transformer"},
        params={
            "patch_size": {"type": "choice", "values": [128, 256, 512]},
            "depth": {"type": "int", "low": 3, "high": 5},  # alone, each value passes
        },
    )
    with pytest.raises(ConfigError) as err:
        load_space(_write(tmp_path, raw))
    assert "the combination {patch_size: 512, depth: 3} is impossible" in str(err.value)
    assert "'transformer' holds at most 1024 tokens" in str(err.value)
    raw["params"]["patch_size"]["values"] = [128, 256]  # 16x16 and 32x32 tokens
    assert load_space(_write(tmp_path, raw)).params[0].values == (128, 256)


def test_the_planned_default_is_trains_defaults_moved_into_the_space(tmp_path: Path) -> None:
    """Each searched parameter at the run config's default where the space allows it, else
    at its nearest allowed value (a numeric choice on a log scale, a range clipped); a
    conditional parameter only where its condition holds."""
    from unet_search.core.config import RunConfig
    from unet_search.space.spec import nearest_allowed

    defaults = RunConfig().flat()
    assert (defaults["encoder"], defaults["lr"], defaults["depth"]) == ("none", 1e-3, 4)
    raw = _space(
        params__lr={"type": "loguniform", "low": 2e-3, "high": 1e-2},
        params__base_filters={"type": "choice", "values": [8, 64]},
        params__dropout={"type": "uniform", "low": 0.1, "high": 0.3},
    )
    spec = load_space(_write(tmp_path, raw))
    assert spec.default_params() == {
        "encoder": "none",
        "upsampling:0": "transpose",  # resnet18's alternative is not active
        "depth": 4,
        "lr": 2e-3,  # clipped into the range
        "base_filters": 8,  # 16 is nearer 8 than 64 on a log scale (and absolutely)
        "dropout": 0.1,
    }
    # Enqueued, Optuna asks for exactly these values and the trial says it is the default.
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(spec.default_params(), user_attrs={TAG_DEFAULT: True})
    trial = study.ask()
    config = spec.define_by_run(trial)
    assert config is not None and config[TAG_DEFAULT]
    assert TrialRole.of(config) == TrialRole(trial.number, default=True)
    assert trial.params == spec.default_params()
    choice = spec.params[0]  # encoder
    assert nearest_allowed(choice, "vgg11") == "none"  # not numeric: the first value
    lr_choice = dataclass_replace(spec.params[-2], type="choice", values=(1e-7, 1e-2))
    assert nearest_allowed(lr_choice, 1e-3) == 1e-2  # a decade away, not four
    assert nearest_allowed(dataclass_replace(lr_choice, values=(-1.0, 0.5)), 0.0) == 0.5


QUICK = Path(__file__).parents[2] / "search_spaces" / "quick.yaml"


def test_numbers_in_a_space_are_read_as_people_write_them(tmp_path: Path) -> None:
    text = yaml.safe_dump(_space(), sort_keys=False).replace("0.0001", "1e-4")
    assert "low: 1e-4" in text  # YAML 1.1 (PyYAML) would read a string
    spec = load_space(_write(tmp_path, text))
    (lr,) = [p for p in spec.params if p.name == "lr"]
    assert lr.low == 1e-4 and isinstance(lr.low, float)
    assert load_space(QUICK, ["lr=3e-3"]).base_config().optim.lr == 3e-3


def test_a_set_of_a_searched_parameter_fixes_it_and_takes_it_out_of_the_search(
    tmp_path: Path,
) -> None:
    spec = load_space(QUICK, ["lr=0.01"])
    assert [p.name for p in spec.params] == ["dice_weight"]
    assert spec.base_config().optim.lr == 0.01
    assert spec.notes == (
        "--set lr=0.01: `lr` is searched by quick.yaml; fixed at 0.01, out of the search",
    )
    # a parameter whose `when` names it keeps the alternatives the value meets
    fixed = load_space(_write(tmp_path, _space()), ["encoder=resnet18"])
    assert [p.name for p in fixed.params] == ["upsampling", "depth", "lr"]
    (upsampling,) = [p for p in fixed.params if p.name == "upsampling"]
    assert upsampling.values == ("nearest",) and not upsampling.when
    assert fixed.base_config().model.encoder == "resnet18"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epohcs=1", "--set epohcs=1: unknown key `epohcs`; did you mean `epochs`?"),
        (
            "search.num_sampels=3",
            "--set search.num_sampels=3: unknown key `search.num_sampels`; did you mean "
            "`num_samples`?",
        ),
        (
            "search.scheduler.grace=1",
            "--set search.scheduler.grace=1: unknown key `search.scheduler.grace`; did you mean "
            "`grace_period`?",
        ),
        (
            "arch=resnet_unet",
            "--set arch=resnet_unet: `model.arch` must be one of ['attention_unet', 'unet', "
            "'unet3plus', 'unetplusplus'], but got 'resnet_unet'.",
        ),
        ("encoder=resnet999", "--set encoder=resnet999: `model.encoder` must be 'none', an smp"),
        ("lr=abc", "--set lr=abc: `optim.lr` must be float, but got 'abc'."),
        (
            "patch_size=50",
            "--set patch_size=50: `data.patch_size` must be a multiple of 2**depth = 16",
        ),
        ("search.scheduler.grace_period=9", "--set search.scheduler.grace_period=9: `search."),
    ],
)
def test_an_error_a_set_caused_names_the_set_not_the_space(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_space(QUICK, [text])
    said = str(err.value)
    assert said.startswith(message), said
    assert "quick.yaml" not in said and "combination" not in said and "`when`" not in said
    assert "valid keys are ['amp'" not in said  # three suggestions, not 70 keys


def test_a_search_shrinks_as_the_user_shrinks_it() -> None:
    """The space's own values yield to the user's `--set` (one note each); the user's never
    change; a space at odds with itself stays an error."""
    shrunk = load_space(QUICK, ["search.num_samples=2", "epochs=1"])
    settings = shrunk.settings
    assert shrunk.base_config().train.epochs == 1 and settings.num_samples == 2
    assert settings.scheduler.grace_period == 1  # quick.yaml's 2 > 1 epoch
    assert settings.compute is not None and settings.compute.epochs == 4  # 24 x 1 / 6
    assert settings.explore_epochs == 1
    assert shrunk.notes == (
        "`search.compute.epochs` 24 of quick.yaml yields to --set epochs=1: 4",
        "`search.scheduler.grace_period` 2 of quick.yaml yields to the trials' epochs (1): 1",
    )
    help_example = load_space(QUICK, ["epochs=2", "search.compute.epochs=12"])
    assert help_example.settings.compute.epochs == 12 and not help_example.notes
    budget = load_space(QUICK, ["search.compute.epochs=4"])  # 0.3 of it: 1 epoch to explore
    assert budget.base_config().train.epochs == 1
    assert budget.settings.scheduler.grace_period == 1
    assert budget.notes[0] == (
        "`epochs` 6 of quick.yaml yields to --set search.compute.epochs=4 (its exploring share): 1"
    )
    kept = load_space(QUICK, ["epochs=1", "search.compute.epochs=4"])  # both the user's
    assert kept.settings.compute.epochs == 4 and kept.base_config().train.epochs == 1
    with pytest.raises(ConfigError, match=r"^--set search.scheduler.grace_period=3: "):
        load_space(QUICK, ["epochs=2", "search.scheduler.grace_period=3"])


def test_objectives_on_a_planned_space_replace_its_metric_and_plan_again() -> None:
    """`--set search.objectives` on a space with `metric`, `mode` and `auto` values: the
    metric yields to the first objective, and the settings survive the plan (they were
    validated a second time, with the metric the first pass filled in, and refused)."""
    from unet_search.plan.planner import BUDGETS, make_plan
    from unet_search.plan.profile import DataProfile

    spec = load_space(
        QUICK,
        [
            "search.objectives=[{metric: val_iou}, {metric: num_parameters}]",
            "search.constraints=[{metric: num_parameters, max: 3.0e6}]",
        ],
    )
    assert spec.settings.objective_pairs == (("val_iou", "max"), ("num_parameters", "min"))
    assert spec.notes == (
        "`search.metric` val_dice of quick.yaml yields to --set search.objectives=[{metric: "
        "val_iou}, {metric: num_parameters}] (its first objective): val_iou",
    )
    stats = DataProfile(
        count=20,
        median_size=(200, 200),
        min_size=(180, 180),
        object_px=12.0,
        objects=400,
        foreground=0.1,
        mean=(0.3,),
        std=(0.2,),
        mean_spread=0.1,
        std_spread=0.1,
        touching=0.0,
    )
    planned = spec.with_plan(make_plan(stats, BUDGETS["cpu-quick"], spec.plan_given()))
    assert planned.settings.metric == "val_iou" and planned.settings.multi_objective
    assert planned.settings.constraints[0].max == 3e6


def test_the_searchs_default_trial_is_what_train_runs(synth_dir: Path) -> None:
    """quick.yaml's planned default (trial 1) and `unet-search train` given quick.yaml's
    fixed values (every planned one left to the plan) are one configuration: the plan is
    made by the same rules from the same data, nothing else differs."""
    from unet_search.core.config import run_leaves
    from unet_search.data.dataset import load_dataset
    from unet_search.plan.planner import plan_run
    from unet_search.space.load import plan_space

    spec = load_space(QUICK)
    arrays = load_dataset(synth_dir, spec.base_config().data)
    planned = plan_space(spec, arrays, "cpu-quick")
    config = {**planned.default_params(), **TrialRole(1, default=True).keys()}
    trial = planned.trial(config).run
    fixed = yaml.safe_load(QUICK.read_text())["fixed"]
    given = [f"{key}={value}" for key, value in fixed.items() if value != "auto"]
    train, plan = plan_run(*run_leaves(None, given), arrays, "cpu-quick")
    assert plan is not None and plan.to_json() == planned.plan.to_json()
    assert train == trial
