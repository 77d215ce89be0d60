"""Search-space YAML -> a validated, frozen :class:`SearchSpec` and an Optuna define-by-run space.

Schema (unknown keys are errors)::

    name: quick                      # search and MLflow experiment name
    model_name: unet-quick           # registered model name (default: unet-<name>)
    description: ...
    fixed: {patch_size: 96, epochs: 4, ...}   # any run-config key (flat or sections), preset;
                                     # image_size: the square of resize-mode trials only
    params:                          # searched, in order; `when` may only name earlier params
      encoder: {type: choice, values: [none, resnet18]}
      arch: {type: choice, values: [unet, unetplusplus], when: {encoder: [resnet18]}}
      upsampling:                    # a list: alternatives under exclusive conditions
        - {type: choice, values: [transpose, bilinear], when: {encoder: none}}
        - {type: choice, values: [nearest, bilinear], when: {encoder: [resnet18]}}
      lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
      depth: {type: int, low: 2, high: 4, step: 1}
    search:
      num_samples: 8                 # trials, the baseline included
      metric: val_dice               # val_dice | val_iou | val_dsb_score | val_ap50 | val_loss
      mode: max
      seed: 0
      baseline: seed_keras           # a preset evaluated as Optuna's first trial, or none
      sampler: tpe                   # tpe | random (random: a control to compare against)
      startup_trials: null           # TPE's random start; null: num_samples // 4 in [2, 10]
      max_concurrent_trials: null    # null: derived from the cluster
      time_budget_s: null
      scheduler: {type: asha, grace_period: 1, reduction_factor: 2, max_t: null}
                                     # asha | asha_stopping | fifo (unet_search.search.asha)
      budget: null                   # the plan's budget: cpu-quick | cpu | gpu-<GiB>; null:
                                     # cpu-quick without GPUs (plan.planner.default_budget)
      compute: {epochs: 40}          # the search's compute (epochs and/or hours), split
      final_fit: 0.7                 # between exploring and a final fit of the best (share)
      final_fit_start: kept          # kept: from the source trial's kept weights | scratch |
                                     # continue: its schedule on from where it stopped
      default_trial: true            # the planned default configuration is trial 1
      incumbent_margin: 0.1          # the final fit trains a challenger only when it beat
                                     # the default at equal epochs by more (search.incumbent)
      champion_must_beat_otsu: true  # a val_dice below Otsu's is registered as challenger
      onnx: true                     # register onnx/model.onnx with the model, checked
      latency_image: 512             # inference_ms: ms per image of this size (or [h, w]),
                                     # measured by every trial before its first epoch
      constraints:                   # limits checked before a trial trains; a trial over
        - {metric: num_parameters, max: 5.0e6}   # one trains nothing (infeasible)
        - {metric: inference_ms, max: 50}
      objectives:                    # several (instead of metric and mode): MO-ASHA and a
        - {metric: val_dice}         # multi-objective TPE; the first is the search metric
        - {metric: inference_ms}
      pick: best                     # the registered model, from the front: best | knee

`auto` (in ``fixed``: scale, patch_size, depth, batch_size, patches_per_epoch, normalization,
target; and as ``low`` / ``high`` of an int ``depth``) is filled from the dataset's plan
(:mod:`unet_search.plan.planner`); values the space gives bind the plan.

Every reachable combination of choices (ints at both bounds, floats at both bounds) is
validated before any trial starts, so an impossible combination (e.g. a transposed-conv
decoder with an smp encoder) is an error naming the combination.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self, get_args

import optuna
from pydantic import Field, TypeAdapter, model_validator

from unet_search.core.config import (
    LEAF_SECTION,
    PRESETS,
    RunConfig,
)
from unet_search.core.metrics import best_key
from unet_search.core.schema import Frozen, broken, rule
from unet_search.core.sections import PLANNED_LEAVES, AutoSetting
from unet_search.core.tags import TAG_BASELINE, TAG_DEFAULT
from unet_search.plan.planner import Plan
from unet_search.space.role import Trial, TrialRole
from unet_search.space.settings import LIMITED, SearchSettings

__all__ = [
    "BASELINE_LEAVES",
    "BASELINE_SECTIONS",
    "ChoiceParam",
    "MAX_COMBINATIONS",
    "MODEL_FIELDS",
    "nearest_allowed",
    "PARAM_TYPES",
    "ParamSpec",
    "PROVISIONAL",
    "RangeParam",
    "RESOURCE_FIELDS",
    "SearchSpec",
    "SPACE_PARAM",
]


# Values `auto` settings take when a space is read without its data (checks, `submit`): the
# sections' defaults, which pass every rule (a searched depth: 3 to the default); the real
# ones come from the dataset's plan before a trial runs.
_DEFAULTS = RunConfig().flat()
PROVISIONAL: dict[str, Any] = {
    **{leaf: _DEFAULTS[leaf] for leaf in PLANNED_LEAVES},
    "depth.low": 3,
    "depth.high": _DEFAULTS["depth"],
}


MAX_COMBINATIONS = 200_000


# Only these sections of a baseline preset apply: the data, the budget and the resources of
# the search stay, so the baseline is measured like every other trial.
BASELINE_SECTIONS = ("model", "loss", "optim", "augment")


BASELINE_LEAVES = ("input_mode", "image_size", "normalization", "target", "early_stop_metric")


# The fields whose searched values are checked in every combination (check_combinations):
# the model's, and the data's that model rules read (classes; a patch must fit 2**depth and
# a transformer's token limit). A model field that no rule combines with another (a dropout
# rate, batch norm on or off, transformer layers, UNet 3+ skip width) is checked alone:
# crossing it with the rest would multiply the walk (full.yaml: ~24x) and check nothing more.
ALONE_FIELDS = {"dropout", "batchnorm", "transformer_layers", "unet3plus_channels"}
MODEL_FIELDS = {
    leaf for leaf, section in LEAF_SECTION.items() if section == "model"
} - ALONE_FIELDS | {"num_classes", "patch_size"}


RESOURCE_FIELDS = {"num_workers", "cpus_per_worker", "gpus_per_worker"}


# A parameter's `when`, checked: (earlier parameter, the values it must have), all of them.
Conditions = tuple[tuple[str, tuple[Any, ...]], ...]


def _unique(values: list[Any]) -> bool:
    return len({repr(v) for v in values}) == len(values)


def _plain(values: list[Any]) -> bool:
    return not any(isinstance(v, dict | list) for v in values)


class ChoiceParam(Frozen):
    """A searched choice as a space file gives it (``when`` is checked against the earlier
    parameters by :func:`unet_search.space.validate.parse_params`)."""

    type: Literal["choice"]
    values: Annotated[
        list[Any],
        rule("must be a non-empty list", bool),
        rule("must not repeat a value", _unique),
        rule("must hold plain values", _plain),
    ]
    when: Any = None

    def spec(self, name: str, key: str, when: Conditions) -> ParamSpec:
        return ParamSpec(name, key, self.type, values=tuple(self.values), when=when)


class RangeParam(Frozen):
    """A searched int or float range as a space file gives it."""

    type: Literal["int", "uniform", "loguniform"]
    low: int | float
    high: int | float
    step: Annotated[int | float, rule("must be a positive number", lambda v: v > 0)] | None = None
    when: Any = None

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.type == "int":
            for bound in ("low", "high"):
                if not isinstance(getattr(self, bound), int):
                    raise broken(
                        f".{bound}", "must be an integer for type int", getattr(self, bound)
                    )
        if self.low > self.high:
            raise broken("", "needs `low <= high`", [self.low, self.high])
        if self.type == "loguniform" and self.low <= 0:
            raise broken(".low", "must be > 0 on a log scale (loguniform)", self.low)
        if self.step is not None and self.type == "loguniform":
            raise broken(".step", "cannot be combined with a log scale", self.step)
        return self

    def spec(self, name: str, key: str, when: Conditions) -> ParamSpec:
        log = self.type == "loguniform"
        return ParamSpec(
            name, key, self.type, low=self.low, high=self.high, step=self.step, log=log, when=when
        )


# One searched parameter of a space file: the model its `type` names (the discriminator).
SPACE_PARAM: TypeAdapter[ChoiceParam | RangeParam] = TypeAdapter(
    Annotated[ChoiceParam | RangeParam, Field(discriminator="type")]
)
PARAM_TYPES: tuple[str, ...] = tuple(
    kind
    for model in (ChoiceParam, RangeParam)
    for kind in get_args(model.model_fields["type"].annotation)
)


@dataclass(frozen=True)
class ParamSpec:
    """One searched dimension (or one conditional alternative of it)."""

    name: str  # the run-config field it sets
    key: str  # the Optuna parameter name (unique)
    type: str
    values: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False
    when: Conditions = ()

    def active(self, chosen: Mapping[str, Any]) -> bool:
        """Whether all ``when`` conditions hold for the values chosen so far."""
        return all(chosen.get(name) in allowed for name, allowed in self.when)

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "choice":
            return trial.suggest_categorical(self.key, list(self.values))
        if self.type == "int":
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(
            self.key,
            self.low,
            self.high,
            step=self.step,
            log=self.type == "loguniform" or self.log,
        )

    def probe_values(self) -> tuple[Any, ...]:
        """Values that exercise validity: every choice, both bounds of a range."""
        if self.type == "choice":
            return self.values
        if self.type == "int":
            return (int(self.low), int(self.high))
        return (self.low, self.high)


def nearest_allowed(param: ParamSpec, wanted: Any) -> Any:
    """``wanted`` where ``param`` allows it, else its nearest allowed value: a range clips
    (an int onto its step), a numeric choice takes the closest value (on a log scale when
    every value is positive: 1e-3 is nearer 1e-2 than 1e-7), any other choice its first."""
    if param.type == "choice":
        values = list(param.values)
        if wanted in values:
            return wanted
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(numbers) < len(values) or isinstance(wanted, bool | str):
            return values[0]
        if wanted > 0 and all(v > 0 for v in numbers):
            return min(numbers, key=lambda v: abs(math.log(v) - math.log(wanted)))
        return min(numbers, key=lambda v: abs(v - wanted))
    value = min(max(float(wanted), param.low), param.high)
    if param.type == "int":
        step = int(param.step or 1)
        return int(param.low) + step * round((value - param.low) / step)
    return value


@dataclass(frozen=True)
class SearchSpec:
    """A validated search space."""

    name: str
    model_name: str
    description: str
    source: str  # the YAML text, logged as an artifact
    fixed: tuple[tuple[str, Any], ...]  # flat run-config leaves (preset expanded)
    params: tuple[ParamSpec, ...]
    settings: SearchSettings
    # Settings given as `auto` (fixed leaves; the bounds of a searched depth) and the plan
    # that filled them (None: provisional values, see PROVISIONAL).
    auto: tuple[AutoSetting, ...] = ()
    plan: Plan | None = None
    # What of the space yielded to the user's `--set` (a searched key fixed, a grace period
    # shortened...), one line each, for the command to say.
    notes: tuple[str, ...] = ()

    @property
    def auto_leaves(self) -> set[str]:
        """The fixed leaves given as ``auto``."""
        return {a.name for a in self.auto if not a.bound}

    def with_plan(self, plan: Plan) -> SearchSpec:
        """This space with its ``auto`` settings set to ``plan``'s values (unchecked: see
        :func:`unet_search.space.load.plan_space`)."""
        fixed = dict(self.fixed)
        for leaf in self.auto_leaves:
            value = plan.value(leaf)
            fixed[leaf] = list(value) if isinstance(value, tuple) else value
        params = tuple(
            dataclasses.replace(
                p,
                low=plan.depth_low if AutoSetting(p.key, "low") in self.auto else p.low,
                high=plan.depth_high if AutoSetting(p.key, "high") in self.auto else p.high,
            )
            for p in self.params
        )
        settings = self.settings.with_values(budget=plan.budget)
        spec = dataclasses.replace(
            self, fixed=tuple(sorted(fixed.items())), params=params, settings=settings, plan=plan
        )
        return spec

    def plan_given(self) -> dict[str, Any]:
        """What binds the plan: every planned setting the space fixes (explicitly or by
        default) and does not search, the largest explicit searched depth, the encoder
        weights and whether a transformer bottleneck may run (see
        :func:`unet_search.plan.planner.make_plan`)."""
        searched = {p.name for p in self.params}
        flat = self.base_config().flat()
        given: dict[str, Any] = {
            leaf: flat[leaf]
            for leaf in PLANNED_LEAVES
            if leaf not in self.auto_leaves and leaf not in searched
        }
        highs = [
            int(p.high)
            for p in self.params
            if p.name == "depth"
            and p.type == "int"
            and AutoSetting(p.key, "high") not in self.auto
        ]
        highs += [int(v) for p in self.params if p.name == "depth" for v in p.values]
        if "depth" in searched and highs:
            given["depth_max"] = max(highs)
        if "encoder_weights" not in searched:
            given["encoder_weights"] = flat["encoder_weights"]
        given["transformer"] = (
            any("transformer" in p.values for p in self.params if p.name == "bottleneck")
            if "bottleneck" in searched
            else flat["bottleneck"] == "transformer"
        )
        return given

    @property
    def fixed_dict(self) -> dict[str, Any]:
        return dict(self.fixed)

    def run_config(self, leaves: Mapping[str, Any], source: str | None = None) -> RunConfig:
        """A trial's run config from its leaves. In a space, ``image_size`` is the square of
        resize-mode trials (the seed baseline): a patch-mode trial does not use it. The kept
        weights follow the search metric unless ``early_stop_metric`` says otherwise."""
        leaves = dict(leaves)
        if leaves.get("input_mode", "patch") == "patch":
            leaves.pop("image_size", None)
        leaves.setdefault("early_stop_metric", self.settings.metric)
        return RunConfig.from_dict(leaves, source=source or f"space {self.name}")

    def base_config(self) -> RunConfig:
        """The fixed settings alone (what every trial shares)."""
        return self.run_config(self.fixed_dict, f"space {self.name}: fixed")

    def define_by_run(self, trial: optuna.Trial) -> dict[str, Any] | None:
        """Optuna define-by-run space. The baseline trial samples nothing (so TPE learns
        nothing false from it) and returns its whole config as constants."""
        if trial.user_attrs.get(TAG_BASELINE):
            return TrialRole(trial.number, baseline=True).keys()
        chosen: dict[str, Any] = {}
        for param in self.params:
            if param.active(chosen):
                chosen[param.name] = param.suggest(trial)
        return TrialRole(trial.number, default=bool(trial.user_attrs.get(TAG_DEFAULT))).keys()

    def default_params(self) -> dict[str, Any]:
        """The planned default configuration inside this space, as Optuna parameters: what
        ``unet-search train`` uses, every planned value planned (the fixed values;
        each searched parameter at the run config's default, a searched depth at the plan's
        depth), each moved to the space's nearest allowed value where the space does not
        allow it (:func:`nearest_allowed`)."""
        flat = self.base_config().flat()
        chosen: dict[str, Any] = {}
        out: dict[str, Any] = {}
        for param in self.params:
            if not param.active(chosen) or param.name in chosen:
                continue
            wanted = flat[param.name]
            if param.name == "depth" and self.plan is not None:
                wanted = self.plan.depth
            chosen[param.name] = out[param.key] = nearest_allowed(param, wanted)
        return out

    def assignments(self, trial_config: Mapping[str, Any]) -> dict[str, Any]:
        """Tune's trial config (Optuna keys) -> run-config leaves."""
        by_key = {p.key: p.name for p in self.params}
        return {by_key[k]: v for k, v in trial_config.items() if k in by_key}

    def baseline_leaves(self) -> dict[str, Any]:
        """What the baseline preset sets: its model, loss, optimizer and augmentation, its
        input mode and square, and the epoch it keeps (the Keras seed: resize to 128, keep
        the best val_loss). ``fixed.image_size`` overrides its square."""
        preset = PRESETS[self.settings.baseline or ""]
        leaves = {
            k: v
            for k, v in preset.items()
            if LEAF_SECTION[k] in BASELINE_SECTIONS or k in BASELINE_LEAVES
        }
        if "image_size" in self.fixed_dict and "image_size" in leaves:
            leaves["image_size"] = self.fixed_dict["image_size"]
        return leaves

    def trial(self, trial_config: Mapping[str, Any]) -> Trial:
        """A trial's Tune config parsed: its role and its full run config (fixed <- sampled,
        or fixed <- the baseline preset; a final fit's own epochs)."""
        role = TrialRole.of(trial_config)
        leaves = dict(self.fixed_dict)
        if role.baseline:
            leaves.update(self.baseline_leaves())
        else:
            leaves.update(self.assignments(trial_config))
        if role.final is not None:
            leaves["epochs"] = role.final.epochs
        run = self.run_config(leaves)
        if role.final is None and not role.baseline and "schedule_epochs" not in leaves:
            span = self.settings.schedule_epochs(run.train.epochs)
            if span:  # an exploring trial, the first part of a long run (settings.py)
                run = self.run_config({**leaves, "schedule_epochs": span})
        return Trial(role, run)

    @property
    def tune_metric(self) -> str:
        """Tune, ASHA and Optuna follow each trial's best value so far (the kept weights)."""
        return best_key(self.settings.metric)

    @property
    def tune_objectives(self) -> tuple[tuple[str, str], ...]:
        """(result key, mode) of each objective: a validation metric's best so far (the kept
        weights), a limited one (num_parameters, inference_ms) as measured before training."""
        return tuple(
            (metric if metric in LIMITED else best_key(metric), mode)
            for metric, mode in self.settings.objective_pairs
        )

    def _closure(self, names: set[str]) -> set[str]:
        """``names`` plus every parameter their conditions depend on (transitively)."""
        out, changed = set(names), True
        while changed:
            changed = False
            for param in self.params:
                if param.name in out:
                    for other, _ in param.when:
                        if other not in out:
                            out.add(other)
                            changed = True
        return out

    def combinations(self, fields: set[str] | None = None) -> Iterator[dict[str, Any]]:
        """Every reachable assignment of probe values of the parameters that set ``fields``
        (default: all) and those their conditions depend on, walking the conditions in
        order. Other parameters are left out (they take their fixed or default value)."""
        wanted = self._closure(fields) if fields is not None else {p.name for p in self.params}

        def walk(i: int, chosen: dict[str, Any]) -> Iterator[dict[str, Any]]:
            if i == len(self.params):
                yield dict(chosen)
                return
            param = self.params[i]
            if param.name not in wanted or not param.active(chosen) or param.name in chosen:
                yield from walk(i + 1, chosen)
                return
            for value in param.probe_values():
                chosen[param.name] = value
                yield from walk(i + 1, chosen)
                del chosen[param.name]

        yield from walk(0, {})

    def max_workers_cpus_gpus(self) -> tuple[int, float, float]:
        """The largest CPUs and GPUs any single trial (one worker / all workers) can ask."""
        worst = (0, 0.0, 0.0)
        for combo in itertools.islice(self.combinations(RESOURCE_FIELDS), MAX_COMBINATIONS):
            cfg = self.base_config().replace(**combo)
            tc = cfg.train
            worst = (
                max(worst[0], tc.num_workers * tc.cpus_per_worker),
                max(worst[1], tc.gpus_per_worker),
                max(worst[2], tc.num_workers * tc.gpus_per_worker),
            )
        return worst
