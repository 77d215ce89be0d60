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
      metric: val_dice               # val_dice | val_iou | val_dsb_score | val_loss
      mode: max
      seed: 0
      baseline: seed_keras           # a preset evaluated as Optuna's first trial, or none
      sampler: tpe                   # tpe | random (random: a control to compare against)
      startup_trials: null           # TPE's random start; null: num_samples // 4 in [2, 10]
      max_concurrent_trials: null    # null: derived from the cluster
      time_budget_s: null
      scheduler: {type: asha, grace_period: 1, reduction_factor: 2, max_t: null}
                                     # asha | asha_stopping | fifo (unet_search.asha)
      budget: null                   # the plan's budget: cpu-quick | cpu | gpu-<GiB>; null:
                                     # cpu-quick without GPUs (unet_search.plan.default_budget)

`auto` (in ``fixed``: scale, patch_size, depth, batch_size, patches_per_epoch, normalization;
and as ``low`` / ``high`` of an int ``depth``) is filled from the dataset's plan
(:mod:`unet_search.plan`); values the space gives bind the plan.

Every reachable combination of choices (ints at both bounds, floats at both bounds) is
validated before any trial starts, so an impossible combination (e.g. a transposed-conv
decoder with an smp encoder) is an error naming the combination.
"""

from __future__ import annotations

import dataclasses
import itertools
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from unet_search.config import (
    AUTO,
    LEAF_SECTION,
    METRICS,
    PLANNED_LEAVES,
    PRESETS,
    ConfigError,
    RunConfig,
    UserError,
    flat_leaves,
    parse_override,
    read_yaml,
)
from unet_search.data import DatasetArrays
from unet_search.models import validate_model_config
from unet_search.plan import Plan, data_stats, default_budget, make_plan, parse_budget

__all__ = [
    "BASELINE_ATTR",
    "ParamSpec",
    "SchedulerSpec",
    "SearchSettings",
    "SearchSpec",
    "check_name",
    "load_space",
    "load_space_text",
    "plan_space",
]

# Values `auto` settings take when a space is read without its data (checks, `submit`): they
# pass every rule, and the real ones come from the dataset's plan before a trial runs.
PROVISIONAL: dict[str, Any] = {
    "scale": 1.0,
    "patch_size": 128,
    "depth": 4,
    "batch_size": 8,
    "patches_per_epoch": 256,
    "normalization": "default",
    "depth.low": 3,
    "depth.high": 4,
}
PARAM_TYPES = ("choice", "int", "uniform", "loguniform")
BASELINE_ATTR = "unet_search.baseline"
NUMBER_KEY = "unet_search.trial_number"  # Optuna's trial number, in every trial config
MAX_COMBINATIONS = 200_000
# Only these sections of a baseline preset apply: the data, the budget and the resources of
# the search stay, so the baseline is measured like every other trial.
BASELINE_SECTIONS = ("model", "loss", "optim", "augment")
BASELINE_LEAVES = ("input_mode", "image_size", "normalization", "early_stop_metric")
MODEL_FIELDS = {leaf for leaf, section in LEAF_SECTION.items() if section == "model"}
MODEL_FIELDS.add("num_classes")
RESOURCE_FIELDS = {"num_workers", "cpus_per_worker", "gpus_per_worker"}


def _err(source: str, key: str, rule: str, value: object = ...) -> ConfigError:
    got = "" if value is ... else f", but got {value!r}"
    return ConfigError(f"{source}: `{key}` {rule}{got}.")


def _only_keys(raw: Mapping[str, Any], allowed: set[str], source: str, where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise _err(
            source, f"{where}{unknown[0]}", f"is not a valid key; valid keys are {sorted(allowed)}"
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
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

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


@dataclass(frozen=True)
class SchedulerSpec:
    type: str = "asha"  # asha (promotions) | asha_stopping (Tune's) | fifo (none)
    grace_period: int = 1
    reduction_factor: int = 2
    max_t: int | None = None  # None: the trials' epochs


@dataclass(frozen=True)
class SearchSettings:
    num_samples: int = 8
    metric: str = "val_dice"
    mode: str = "max"
    seed: int = 0
    baseline: str | None = "seed_keras"
    sampler: str = "tpe"  # tpe (Optuna's TPE) | random (a control: the benchmarks compare)
    startup_trials: int | None = None  # TPE's random start (None: see tpe_startup_trials)
    max_concurrent_trials: int | None = None
    time_budget_s: float | None = None
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    budget: str | None = None  # the plan's compute budget (unet_search.plan); None: default

    @property
    def tpe_startup_trials(self) -> int:
        """Trials TPE samples at random before it models the results: ``startup_trials``,
        or a quarter of the search (2 to 10). Optuna's fixed 10 left an 8-trial search random
        throughout, and a budget of ~16 full trials mostly random."""
        if self.startup_trials is not None:
            return self.startup_trials
        return max(2, min(10, self.num_samples // 4))


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
    # Settings given as `auto` (fixed leaves; `<param key>.low` / `.high` of a searched depth)
    # and the plan that filled them (None: provisional values, see PROVISIONAL).
    auto: tuple[str, ...] = ()
    plan: Plan | None = None

    def with_plan(self, plan: Plan) -> SearchSpec:
        """This space with its ``auto`` settings set to ``plan``'s values (checked again)."""
        fixed = dict(self.fixed)
        for leaf in self.auto:
            if leaf in PLANNED_LEAVES:
                value = plan.value(leaf)
                fixed[leaf] = list(value) if isinstance(value, tuple) else value
        params = tuple(
            dataclasses.replace(
                p,
                low=plan.depth_low if f"{p.key}.low" in self.auto else p.low,
                high=plan.depth_high if f"{p.key}.high" in self.auto else p.high,
            )
            for p in self.params
        )
        settings = dataclasses.replace(self.settings, budget=plan.budget)
        spec = dataclasses.replace(
            self, fixed=tuple(sorted(fixed.items())), params=params, settings=settings, plan=plan
        )
        _check_combinations(spec, f"{self.name}.yaml planned ({plan.budget})")
        return spec

    def plan_given(self) -> dict[str, Any]:
        """What binds the plan: every planned setting the space fixes (explicitly or by
        default) and does not search, the largest explicit searched depth, and the encoder
        weights (see :func:`unet_search.plan.make_plan`)."""
        searched = {p.name for p in self.params}
        flat = self.base_config().flat()
        given: dict[str, Any] = {
            leaf: flat[leaf]
            for leaf in PLANNED_LEAVES
            if leaf not in self.auto and leaf not in searched
        }
        highs = [
            int(p.high)
            for p in self.params
            if p.name == "depth" and p.type == "int" and f"{p.key}.high" not in self.auto
        ]
        highs += [int(v) for p in self.params if p.name == "depth" for v in p.values]
        if "depth" in searched and highs:
            given["depth_max"] = max(highs)
        if "encoder_weights" not in searched:
            given["encoder_weights"] = flat["encoder_weights"]
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
        if trial.user_attrs.get(BASELINE_ATTR):
            return {BASELINE_ATTR: True, NUMBER_KEY: trial.number}
        chosen: dict[str, Any] = {}
        for param in self.params:
            if param.active(chosen):
                chosen[param.name] = param.suggest(trial)
        return {NUMBER_KEY: trial.number}

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

    def trial_run_config(self, trial_config: Mapping[str, Any]) -> RunConfig:
        """The full run config of a trial: fixed <- sampled (or fixed <- baseline preset)."""
        leaves = dict(self.fixed_dict)
        if trial_config.get(BASELINE_ATTR):
            leaves.update(self.baseline_leaves())
        else:
            leaves.update(self.assignments(trial_config))
        return self.run_config(leaves)

    def is_baseline(self, trial_config: Mapping[str, Any]) -> bool:
        return bool(trial_config.get(BASELINE_ATTR))

    @property
    def tune_metric(self) -> str:
        """Tune, ASHA and Optuna follow each trial's best value so far (the kept weights)."""
        return f"best_{self.settings.metric}"

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


def _param(
    name: str, raw: Any, index: int | None, earlier: dict[str, set[Any]], source: str
) -> ParamSpec:
    where = f"params.{name}" + (f"[{index}]" if index is not None else "")
    if not isinstance(raw, Mapping):
        raise _err(source, where, "must be a mapping with a `type`", raw)
    _only_keys(raw, {"type", "values", "low", "high", "step", "log", "when"}, source, f"{where}.")
    kind = raw.get("type")
    if kind not in PARAM_TYPES:
        raise _err(source, f"{where}.type", f"must be one of {list(PARAM_TYPES)}", kind)
    key = name if index is None else f"{name}:{index}"
    when = _when(raw.get("when", {}), where, earlier, source)
    if kind == "choice":
        values = raw.get("values")
        if not isinstance(values, list) or not values:
            raise _err(source, f"{where}.values", "must be a non-empty list", values)
        if len({repr(v) for v in values}) != len(values):
            raise _err(source, f"{where}.values", "must not repeat a value", values)
        if any(isinstance(v, dict | list) for v in values):
            raise _err(source, f"{where}.values", "must hold plain values", values)
        return ParamSpec(name, key, kind, values=tuple(values), when=when)
    for bound in ("low", "high"):
        value = raw.get(bound)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _err(source, f"{where}.{bound}", "must be a number", value)
        if kind == "int" and not isinstance(value, int):
            raise _err(source, f"{where}.{bound}", "must be an integer for type int", value)
    low, high = raw["low"], raw["high"]
    if low > high:
        raise ConfigError(
            f"{source}: `{where}`: `low <= high` must hold, but got (low={low}, high={high})."
        )
    log = bool(raw.get("log", False)) or kind == "loguniform"
    if log and low <= 0:
        raise ConfigError(
            f"{source}: `{where}`: a log scale needs `low > 0`, but got (low={low})."
        )
    step = raw.get("step")
    if step is not None and (
        isinstance(step, bool) or not isinstance(step, int | float) or step <= 0
    ):
        raise _err(source, f"{where}.step", "must be a positive number", step)
    if step is not None and log:
        raise _err(source, f"{where}.step", "cannot be combined with a log scale", step)
    return ParamSpec(name, key, kind, low=low, high=high, step=step, log=log, when=when)


def _when(
    raw: Any, where: str, earlier: dict[str, set[Any]], source: str
) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if not isinstance(raw, Mapping):
        raise _err(source, f"{where}.when", "must map earlier parameter names to values", raw)
    out = []
    for other, allowed in raw.items():
        if other not in earlier:
            raise _err(
                source,
                f"{where}.when",
                f"names `{other}`, which is not a parameter "
                f"defined before it; earlier parameters are {sorted(earlier)}",
            )
        values = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        possible = earlier[other]
        unknown = [v for v in values if possible and v not in possible]
        if unknown:
            raise _err(
                source,
                f"{where}.when.{other}",
                f"must use values `{other}` can take ({sorted(map(repr, possible))})",
                unknown[0],
            )
        out.append((other, values))
    return tuple(out)


def _params(raw: Any, fixed: set[str], source: str) -> tuple[ParamSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise _err(source, "params", "must be a mapping of parameter names", raw)
    out: list[ParamSpec] = []
    earlier: dict[str, set[Any]] = {}
    for name, spec in raw.items():
        if name not in LEAF_SECTION:
            raise _err(
                source,
                f"params.{name}",
                f"is not a run-config key; valid keys are {sorted(LEAF_SECTION)}",
            )
        if name in fixed:
            raise _err(source, f"params.{name}", "is also in `fixed`; keep it in one place")
        alternatives = spec if isinstance(spec, list) else [spec]
        if not alternatives:
            raise _err(source, f"params.{name}", "must not be an empty list")
        group = [
            _param(name, alt, i if isinstance(spec, list) else None, earlier, source)
            for i, alt in enumerate(alternatives)
        ]
        if len(group) > 1 and any(not p.when for p in group):
            raise _err(source, f"params.{name}", "alternatives must each have a `when`")
        out.extend(group)
        earlier[name] = (
            {v for p in group for v in p.values}
            if all(p.type == "choice" for p in group)
            else set()
        )
    return tuple(out)


SAMPLERS = ("tpe", "random")
SCHEDULERS = ("asha", "asha_stopping", "fifo")  # see unet_search.asha


def make_sampler(settings: SearchSettings) -> optuna.samplers.BaseSampler:
    """The search's Optuna sampler, seeded with ``search.seed``.

    TPE models the parameters jointly (``multivariate``) within groups of parameters that
    occur together (``group``): a conditional space such as an encoder's own depth range
    would otherwise fall back to sampling each parameter on its own."""
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=settings.seed)
    with warnings.catch_warnings():  # `group` is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=settings.seed,
            n_startup_trials=settings.tpe_startup_trials,
            multivariate=True,
            group=True,
        )


def _settings(raw: Any, base: RunConfig, source: str) -> SearchSettings:
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise _err(source, "search", "must be a mapping", raw)
    allowed = {f.name for f in SearchSettings.__dataclass_fields__.values()}
    _only_keys(raw, allowed, source, "search.")
    metric = raw.get("metric", "val_dice")
    searchable = sorted(name for name, m in METRICS.items() if m.searchable)
    if metric not in searchable:
        raise _err(source, "search.metric", f"must be one of {searchable}", metric)
    mode = raw.get("mode", METRICS[metric].mode)
    if mode != METRICS[metric].mode:
        raise _err(source, "search.mode", f"must be {METRICS[metric].mode!r} for {metric}", mode)
    ints = {"num_samples": (1, 100_000), "seed": (0, 2**31)}
    for key, (lo, hi) in ints.items():
        value = raw.get(key, getattr(SearchSettings, key))
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise _err(source, f"search.{key}", f"must be an integer in [{lo}, {hi}]", value)
    concurrent = raw.get("max_concurrent_trials")
    if concurrent is not None and (not isinstance(concurrent, int) or concurrent < 1):
        raise _err(
            source, "search.max_concurrent_trials", "must be null or an integer >= 1", concurrent
        )
    budget = raw.get("time_budget_s")
    if budget is not None and (not isinstance(budget, int | float) or budget <= 0):
        raise _err(source, "search.time_budget_s", "must be null or a positive number", budget)
    baseline = raw.get("baseline", "seed_keras")
    if baseline in ("none", None):
        baseline = None
    elif baseline not in PRESETS:
        raise _err(
            source, "search.baseline", f"must be `none` or a preset {sorted(PRESETS)}", baseline
        )
    sampler = raw.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise _err(source, "search.sampler", f"must be one of {list(SAMPLERS)}", sampler)
    startup = raw.get("startup_trials")
    if startup is not None and (
        isinstance(startup, bool) or not isinstance(startup, int) or startup < 0
    ):
        raise _err(source, "search.startup_trials", "must be null or an integer >= 0", startup)
    plan_budget = raw.get("budget")
    if plan_budget is not None:
        try:
            parse_budget(str(plan_budget))
        except UserError as err:
            raise _err(source, "search.budget", str(err).partition(": ")[2].rstrip(".")) from None
    return SearchSettings(
        raw.get("num_samples", 8),
        metric,
        mode,
        raw.get("seed", 0),
        baseline,
        sampler,
        startup,
        concurrent,
        budget,
        _scheduler(raw.get("scheduler"), base, source),
        None if plan_budget is None else str(plan_budget),
    )


def _scheduler(raw: Any, base: RunConfig, source: str) -> SchedulerSpec:
    raw = {"type": "asha"} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise _err(source, "search.scheduler", "must be a mapping", raw)
    _only_keys(
        raw, {"type", "grace_period", "reduction_factor", "max_t"}, source, "search.scheduler."
    )
    kind = raw.get("type", "asha")
    if kind not in SCHEDULERS:
        raise _err(source, "search.scheduler.type", f"must be one of {list(SCHEDULERS)}", kind)
    grace, factor = raw.get("grace_period", 1), raw.get("reduction_factor", 2)
    max_t = raw.get("max_t")
    epochs = base.train.epochs
    if not isinstance(grace, int) or isinstance(grace, bool) or grace < 1:
        raise _err(source, "search.scheduler.grace_period", "must be an integer >= 1", grace)
    if not isinstance(factor, int | float) or isinstance(factor, bool) or factor < 2:
        raise _err(source, "search.scheduler.reduction_factor", "must be >= 2", factor)
    if max_t is not None and (isinstance(max_t, bool) or max_t != epochs):
        raise _err(
            source,
            "search.scheduler.max_t",
            f"must be null or `epochs` ({epochs}): ASHA ends every trial at max_t, so with "
            "fewer no trial would finish its training and nothing would be registered",
            max_t,
        )
    if grace > epochs:
        raise _err(source, "search.scheduler.grace_period", f"must be <= epochs ({epochs})", grace)
    return SchedulerSpec(kind, grace, int(factor), max_t)


def _check_combinations(spec: SearchSpec, source: str) -> None:
    """Every parameter alone at each probe value (a value out of its field's range), then the
    product of the model fields, which interact (arch x encoder x upsampling x depth ...)."""
    base = spec.fixed_dict
    _check_metric(spec, source)
    for param in spec.params:
        for value in param.probe_values():
            try:
                spec.run_config({**base, param.name: value}, source="x")
            except ConfigError as err:
                raise ConfigError(
                    f"{source}: `params.{param.name}` value {value!r} is "
                    f"invalid: {str(err).removeprefix('x: ')}"
                ) from None
    for count, combo in enumerate(spec.combinations(MODEL_FIELDS)):
        if count >= MAX_COMBINATIONS:
            break
        try:
            cfg = spec.run_config({**base, **combo}, source="combination")
            validate_model_config(cfg.model)
        except ConfigError as err:
            shown = ", ".join(f"{k}: {v!r}" for k, v in combo.items())
            message = str(err).removeprefix("combination: ")
            raise ConfigError(
                f"{source}: the combination {{{shown}}} is impossible: "
                f"{message} Restrict it with `when`."
            ) from None
    if spec.settings.baseline is not None:
        try:
            cfg = spec.trial_run_config({BASELINE_ATTR: True})
            validate_model_config(cfg.model)
        except ConfigError as err:
            raise _err(
                source, "search.baseline", f"cannot run with these fixed settings ({err})"
            ) from None


LOSS_FIELDS = ("loss", "dice_weight", "focal_gamma", "tversky_alpha", "tversky_beta")


def _check_metric(spec: SearchSpec, source: str) -> None:
    """Refuse a search metric that cannot rank its trials: ``val_dsb_score`` where a trial
    computes no DSB score every epoch (``dsb_every`` != 1) or has no instances (more than 2
    classes); ``val_loss`` when the loss itself is searched (each trial would be ranked on
    its own objective)."""
    metric = spec.settings.metric
    if metric == "val_loss":
        searched = sorted({p.name for p in spec.params if p.name in LOSS_FIELDS})
        if searched:
            raise _err(
                source,
                "search.metric",
                f"cannot be val_loss while {', '.join(f'`params.{n}`' for n in searched)} "
                "is searched: trials with other losses have losses on other scales; use "
                "val_dice, val_iou or val_dsb_score",
                metric,
            )
    if metric != "val_dsb_score":
        return
    trials = [
        {**spec.fixed_dict, **combo} for combo in spec.combinations({"dsb_every", "num_classes"})
    ]
    if spec.settings.baseline is not None:
        trials.append({**spec.fixed_dict, **spec.baseline_leaves()})
    defaults = RunConfig().flat()
    for leaves in trials:
        dsb_every = leaves.get("dsb_every", defaults["dsb_every"])
        classes = leaves.get("num_classes", defaults["num_classes"])
        if dsb_every != 1 or classes > 2:
            raise _err(
                source,
                "search.metric",
                "val_dsb_score needs every trial to score DSB2018 instances every epoch "
                f"(`dsb_every: 1`, `num_classes` <= 2), but a trial has dsb_every={dsb_every}, "
                f"num_classes={classes}",
                metric,
            )


def _apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> None:
    """``search.num_samples=3`` / ``search.scheduler.max_t=2`` set search settings; any other
    ``key=value`` (a run-config key) sets a fixed setting."""
    for text in overrides:
        if text.startswith("search."):
            key, _, value = text.partition("=")
            parts = key.split(".")[1:]
            node = raw.setdefault("search", {}) or {}
            raw["search"] = node
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = yaml.safe_load(value) if value.strip() else ""
        else:
            leaf, value = parse_override(text)
            fixed = dict(raw.get("fixed") or {})
            fixed[leaf] = value
            raw["fixed"] = fixed


NAME_RULE = "must be 1-100 letters, digits, '-' or '_' (it names folders and runs)"


def check_name(name: object, source: str, key: str) -> str:
    """A space or search name: it becomes a folder name (Ray results, logs, reports), so it
    can never be a path (no '/', '..', spaces, or a leading '-')."""
    if (
        not isinstance(name, str)
        or not 1 <= len(name) <= 100
        or name.startswith("-")
        or not name.isascii()
        or not name.replace("-", "").replace("_", "").isalnum()
    ):
        raise _err(source, key, NAME_RULE, name)
    return name


def load_space(path: Path, overrides: Iterable[str] = (), plan: Plan | None = None) -> SearchSpec:
    """Read and validate a search-space YAML (plus ``--set`` overrides); raises ConfigError
    naming the file, the key and the rule. Settings given as ``auto`` take ``plan``'s values,
    or provisional ones without a plan (``spec.auto`` names them: plan, then load again)."""
    path = Path(path)
    raw = read_yaml(path)
    source = str(path)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: must be a mapping with `params` and `search`.")
    raw = dict(raw)
    _apply_overrides(raw, overrides)
    _only_keys(raw, {"name", "model_name", "description", "fixed", "params", "search"}, source, "")
    name = raw.get("name", path.stem)
    check_name(name, source, "name")
    fixed_raw = raw.get("fixed") or {}
    if not isinstance(fixed_raw, Mapping):
        raise _err(source, "fixed", "must be a mapping of run-config keys", fixed_raw)
    leaves = flat_leaves(fixed_raw, f"{source}: fixed")
    auto = _fill_auto(leaves, raw, source)
    square = (
        leaves.pop("image_size", None) if leaves.get("input_mode", "patch") == "patch" else None
    )
    base = RunConfig.from_dict(leaves, source=f"{source}: fixed")
    fixed = {k: v for k, v in base.flat().items() if v != RunConfig().flat()[k]}
    explicit = _explicit_leaves(fixed_raw)
    fixed.update({k: base.flat()[k] for k in explicit - {"image_size"}})
    if square is not None:  # the square of resize-mode trials (the baseline), checked as such
        resize = {**leaves, "input_mode": "resize", "image_size": square}
        fixed["image_size"] = RunConfig.from_dict(resize, source=f"{source}: fixed").data.square
    spec = SearchSpec(
        name=name,
        model_name=str(raw.get("model_name", f"unet-{name}")),
        description=str(raw.get("description", "")),
        source=path.read_text(encoding="utf-8"),
        fixed=tuple(sorted(fixed.items())),
        params=_params(raw.get("params"), explicit, source),
        settings=_settings(raw.get("search"), base, source),
        auto=auto,
    )
    _check_combinations(spec, source)
    return spec


def plan_space(spec: SearchSpec, arrays: DatasetArrays, budget: str | None = None) -> SearchSpec:
    """The space with its ``auto`` settings filled from ``arrays``' plan within ``budget``
    (default: ``search.budget``, else :func:`unet_search.plan.default_budget`); a space
    without ``auto``, or already planned, comes back as it is."""
    if not spec.auto or spec.plan is not None:
        return spec
    name = budget or spec.settings.budget
    chosen = (
        parse_budget(name)
        if name
        else default_budget(uses_gpus=spec.max_workers_cpus_gpus()[1] > 0)
    )
    stats = data_stats(arrays, spec.base_config().data)
    return spec.with_plan(make_plan(stats, chosen, spec.plan_given()))


def _fill_auto(leaves: dict[str, Any], raw: dict[str, Any], source: str) -> tuple[str, ...]:
    """Replace ``auto`` in the fixed ``leaves`` and in a searched depth's bounds (in ``raw``)
    by :data:`PROVISIONAL` values; returns what was ``auto``."""
    auto: list[str] = []
    for leaf, value in leaves.items():
        if value == AUTO:
            if leaf not in PLANNED_LEAVES:
                raise _err(
                    source,
                    f"fixed.{leaf}",
                    f"cannot be `auto`; the plan fills only {list(PLANNED_LEAVES)}",
                )
            auto.append(leaf)
            leaves[leaf] = PROVISIONAL[leaf]
    params = raw.get("params")
    if not isinstance(params, Mapping):
        return tuple(auto)
    params = dict(params)
    for name, spec in params.items():
        alternatives = spec if isinstance(spec, list) else [spec]
        filled = []
        for i, alt in enumerate(alternatives):
            if not isinstance(alt, Mapping):
                filled.append(alt)
                continue
            alt = dict(alt)
            for bound in ("low", "high"):
                if alt.get(bound) != AUTO:
                    continue
                if name != "depth" or alt.get("type") != "int":
                    where = f"params.{name}" + (f"[{i}]" if isinstance(spec, list) else "")
                    raise _err(
                        source,
                        f"{where}.{bound}",
                        "cannot be `auto`; only the bounds of an int `depth` are planned",
                    )
                key = (name if not isinstance(spec, list) else f"{name}:{i}") + f".{bound}"
                alt[bound] = PROVISIONAL[f"depth.{bound}"]
                auto.append(key)
            filled.append(alt)
        params[name] = filled if isinstance(spec, list) else filled[0]
    raw["params"] = params
    return tuple(auto)


def load_space_text(text: str, file_name: str, overrides: Iterable[str] = ()) -> SearchSpec:
    """:func:`load_space` of a space saved as text (e.g. a search's ``space.yaml`` read back
    from MLflow); ``file_name`` (``<space name>.yaml``) names it in errors and gives the name."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(file_name).name
        path.write_text(text, encoding="utf-8")
        return load_space(path, overrides)


def _explicit_leaves(raw: Mapping[str, Any]) -> set[str]:
    """Leaf names the user wrote in `fixed` (sections flattened, preset leaves included)."""
    leaves: set[str] = set()
    for key, value in raw.items():
        if key == "preset":
            leaves.update(PRESETS.get(value, {}))
        elif isinstance(value, Mapping):
            leaves.update(value)
        else:
            leaves.add(key)
    return leaves
