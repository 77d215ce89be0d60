"""What a space makes: the define-by-run space, the baseline trial, the planned default (what
`train` runs)."""

from __future__ import annotations

from dataclasses import replace as dataclass_replace
from pathlib import Path

import optuna
import yaml
from space_files import QUICK, small_space, write_space

from unet_search.core.tags import TAG_BASELINE, TAG_DEFAULT, TAG_TRIAL_NUMBER
from unet_search.space.load import load_space
from unet_search.space.role import TrialRole


def test_define_by_run_samples_conditionally(tmp_path: Path) -> None:
    spec = load_space(write_space(tmp_path, small_space()))
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
    spec = load_space(write_space(tmp_path, small_space(params=params)))
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
    spec = load_space(write_space(tmp_path, small_space()))
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


def test_the_planned_default_is_trains_defaults_moved_into_the_space(tmp_path: Path) -> None:
    """Each searched parameter at the run config's default where the space allows it, else
    at its nearest allowed value (a numeric choice on a log scale, a range clipped); a
    conditional parameter only where its condition holds."""
    from unet_search.core.config import RunConfig
    from unet_search.space.spec import nearest_allowed

    defaults = RunConfig().flat()
    assert (defaults["encoder"], defaults["lr"], defaults["depth"]) == ("none", 1e-3, 4)
    raw = small_space(
        params__lr={"type": "loguniform", "low": 2e-3, "high": 1e-2},
        params__base_filters={"type": "choice", "values": [8, 64]},
        params__dropout={"type": "uniform", "low": 0.1, "high": 0.3},
    )
    spec = load_space(write_space(tmp_path, raw))
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
