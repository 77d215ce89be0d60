"""Reading a space: the shipped ones, `--set` overrides (a searched key fixed, a search shrunk,
an error a set caused named as the set), the sampler, objectives on a planned space."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from space_files import QUICK, SPACES, shipped, small_space, write_space

from unet_search.core.errors import ConfigError
from unet_search.core.tags import TAG_BASELINE
from unet_search.space.load import load_space, make_sampler
from unet_search.space.settings import SearchSettings


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_shipped_spaces_are_valid(path: Path) -> None:
    spec = shipped(path)
    assert spec.name == path.stem
    assert spec.settings.num_samples >= 1
    assert spec.source == path.read_text()


def test_full_space_is_a_real_cluster_search() -> None:
    spec = shipped(Path(__file__).parents[2] / "search_spaces" / "full.yaml")
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
    spec = shipped(Path(__file__).parents[2] / "search_spaces" / "seed_baseline.yaml")
    cfg = spec.trial({TAG_BASELINE: True}).run
    assert (cfg.model.depth, cfg.model.base_filters, cfg.model.dropout_schedule) == (4, 16, "ramp")
    assert (cfg.data.image_size, cfg.train.batch_size, cfg.train.epochs) == (128, 16, 25)
    assert cfg.loss.loss == "bce" and spec.settings.num_samples == 1


def test_overrides_shrink_a_space(tmp_path: Path) -> None:
    path = write_space(tmp_path, small_space())
    spec = load_space(
        path, ["epochs=1", "search.num_samples=2", "search.scheduler.grace_period=1"]
    )
    assert spec.base_config().train.epochs == 1
    assert spec.settings.num_samples == 2 and spec.settings.scheduler.grace_period == 1


def test_sampler_setting_picks_a_seeded_optuna_sampler(tmp_path: Path) -> None:
    def settings(**search: object) -> SearchSettings:
        overrides = {f"search__{k}": v for k, v in search.items()}
        return load_space(write_space(tmp_path, small_space(**overrides))).settings

    def first_lrs(sampler: str, seed: int, **search: object) -> list[float]:
        overrides = {f"search__{k}": v for k, v in search.items()}
        raw = small_space(search__sampler=sampler, search__seed=seed, **overrides)
        spec = load_space(write_space(tmp_path, raw))
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
    fixed = load_space(write_space(tmp_path, small_space()), ["encoder=resnet18"])
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
