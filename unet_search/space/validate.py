"""The rules of a space file: keys, parameter types and ranges, conditions, the search
settings and scheduler, the metric, and combinations that cannot build a model. Every error
names the file, the key, the rule and the value received."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unet_search.core.config import (
    LEAF_SECTION,
    PRESETS,
    RunConfig,
)
from unet_search.core.errors import ConfigError, UserError
from unet_search.core.metrics import METRICS
from unet_search.models.build import validate_model_config
from unet_search.space.spec import (
    BASELINE_ATTR,
    MAX_COMBINATIONS,
    MODEL_FIELDS,
    PARAM_TYPES,
    ParamSpec,
    SchedulerSpec,
    SearchSettings,
    SearchSpec,
)
from unet_search.train.plan import parse_budget

__all__ = ["SAMPLERS", "SCHEDULERS", "LOSS_FIELDS", "NAME_RULE", "check_name"]


def space_error(source: str, key: str, rule: str, value: object = ...) -> ConfigError:
    got = "" if value is ... else f", but got {value!r}"
    return ConfigError(f"{source}: `{key}` {rule}{got}.")


def only_keys(raw: Mapping[str, Any], allowed: set[str], source: str, where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise space_error(
            source, f"{where}{unknown[0]}", f"is not a valid key; valid keys are {sorted(allowed)}"
        )


def _param(
    name: str, raw: Any, index: int | None, earlier: dict[str, set[Any]], source: str
) -> ParamSpec:
    where = f"params.{name}" + (f"[{index}]" if index is not None else "")
    if not isinstance(raw, Mapping):
        raise space_error(source, where, "must be a mapping with a `type`", raw)
    only_keys(raw, {"type", "values", "low", "high", "step", "when"}, source, f"{where}.")
    kind = raw.get("type")
    if kind not in PARAM_TYPES:
        raise space_error(source, f"{where}.type", f"must be one of {list(PARAM_TYPES)}", kind)
    key = name if index is None else f"{name}:{index}"
    when = _when(raw.get("when", {}), where, earlier, source)
    if kind == "choice":
        values = raw.get("values")
        if not isinstance(values, list) or not values:
            raise space_error(source, f"{where}.values", "must be a non-empty list", values)
        if len({repr(v) for v in values}) != len(values):
            raise space_error(source, f"{where}.values", "must not repeat a value", values)
        if any(isinstance(v, dict | list) for v in values):
            raise space_error(source, f"{where}.values", "must hold plain values", values)
        return ParamSpec(name, key, kind, values=tuple(values), when=when)
    for bound in ("low", "high"):
        value = raw.get(bound)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise space_error(source, f"{where}.{bound}", "must be a number", value)
        if kind == "int" and not isinstance(value, int):
            raise space_error(source, f"{where}.{bound}", "must be an integer for type int", value)
    low, high = raw["low"], raw["high"]
    if low > high:
        raise ConfigError(
            f"{source}: `{where}`: `low <= high` must hold, but got (low={low}, high={high})."
        )
    log = bool(raw.get(False)) or kind == "loguniform"
    if log and low <= 0:
        raise ConfigError(
            f"{source}: `{where}`: a log scale needs `low > 0`, but got (low={low})."
        )
    step = raw.get("step")
    if step is not None and (
        isinstance(step, bool) or not isinstance(step, int | float) or step <= 0
    ):
        raise space_error(source, f"{where}.step", "must be a positive number", step)
    if step is not None and log:
        raise space_error(source, f"{where}.step", "cannot be combined with a log scale", step)
    return ParamSpec(name, key, kind, low=low, high=high, step=step, log=log, when=when)


def _when(
    raw: Any, where: str, earlier: dict[str, set[Any]], source: str
) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if not isinstance(raw, Mapping):
        raise space_error(
            source, f"{where}.when", "must map earlier parameter names to values", raw
        )
    out = []
    for other, allowed in raw.items():
        if other not in earlier:
            raise space_error(
                source,
                f"{where}.when",
                f"names `{other}`, which is not a parameter "
                f"defined before it; earlier parameters are {sorted(earlier)}",
            )
        values = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        possible = earlier[other]
        unknown = [v for v in values if possible and v not in possible]
        if unknown:
            raise space_error(
                source,
                f"{where}.when.{other}",
                f"must use values `{other}` can take ({sorted(map(repr, possible))})",
                unknown[0],
            )
        out.append((other, values))
    return tuple(out)


def parse_params(raw: Any, fixed: set[str], source: str) -> tuple[ParamSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise space_error(source, "params", "must be a mapping of parameter names", raw)
    out: list[ParamSpec] = []
    earlier: dict[str, set[Any]] = {}
    for name, spec in raw.items():
        if name not in LEAF_SECTION:
            raise space_error(
                source,
                f"params.{name}",
                f"is not a run-config key; valid keys are {sorted(LEAF_SECTION)}",
            )
        if name in fixed:
            raise space_error(source, f"params.{name}", "is also in `fixed`; keep it in one place")
        alternatives = spec if isinstance(spec, list) else [spec]
        if not alternatives:
            raise space_error(source, f"params.{name}", "must not be an empty list")
        group = [
            _param(name, alt, i if isinstance(spec, list) else None, earlier, source)
            for i, alt in enumerate(alternatives)
        ]
        if len(group) > 1 and any(not p.when for p in group):
            raise space_error(source, f"params.{name}", "alternatives must each have a `when`")
        out.extend(group)
        earlier[name] = (
            {v for p in group for v in p.values}
            if all(p.type == "choice" for p in group)
            else set()
        )
    return tuple(out)


SAMPLERS = ("tpe", "random")


SCHEDULERS = ("asha", "asha_stopping", "fifo")  # see unet_search.search.asha


def parse_settings(raw: Any, base: RunConfig, source: str) -> SearchSettings:
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise space_error(source, "search", "must be a mapping", raw)
    allowed = {f.name for f in SearchSettings.__dataclass_fields__.values()}
    only_keys(raw, allowed, source, "search.")
    metric = raw.get("metric", "val_dice")
    searchable = sorted(name for name, m in METRICS.items() if m.searchable)
    if metric not in searchable:
        raise space_error(source, "search.metric", f"must be one of {searchable}", metric)
    mode = raw.get("mode", METRICS[metric].mode)
    if mode != METRICS[metric].mode:
        raise space_error(
            source, "search.mode", f"must be {METRICS[metric].mode!r} for {metric}", mode
        )
    ints = {"num_samples": (1, 100_000), "seed": (0, 2**31)}
    for key, (lo, hi) in ints.items():
        value = raw.get(key, getattr(SearchSettings, key))
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise space_error(
                source, f"search.{key}", f"must be an integer in [{lo}, {hi}]", value
            )
    concurrent = raw.get("max_concurrent_trials")
    if concurrent is not None and (not isinstance(concurrent, int) or concurrent < 1):
        raise space_error(
            source, "search.max_concurrent_trials", "must be null or an integer >= 1", concurrent
        )
    budget = raw.get("time_budget_s")
    if budget is not None and (not isinstance(budget, int | float) or budget <= 0):
        raise space_error(
            source, "search.time_budget_s", "must be null or a positive number", budget
        )
    baseline = raw.get("baseline", "seed_keras")
    if baseline in ("none", None):
        baseline = None
    elif baseline not in PRESETS:
        raise space_error(
            source, "search.baseline", f"must be `none` or a preset {sorted(PRESETS)}", baseline
        )
    sampler = raw.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise space_error(source, "search.sampler", f"must be one of {list(SAMPLERS)}", sampler)
    startup = raw.get("startup_trials")
    if startup is not None and (
        isinstance(startup, bool) or not isinstance(startup, int) or startup < 0
    ):
        raise space_error(
            source, "search.startup_trials", "must be null or an integer >= 0", startup
        )
    plan_budget = raw.get("budget")
    if plan_budget is not None:
        try:
            parse_budget(str(plan_budget))
        except UserError as err:
            raise space_error(
                source, "search.budget", str(err).partition(": ")[2].rstrip(".")
            ) from None
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
        raise space_error(source, "search.scheduler", "must be a mapping", raw)
    only_keys(
        raw, {"type", "grace_period", "reduction_factor", "max_t"}, source, "search.scheduler."
    )
    kind = raw.get("type", "asha")
    if kind not in SCHEDULERS:
        raise space_error(
            source, "search.scheduler.type", f"must be one of {list(SCHEDULERS)}", kind
        )
    grace, factor = raw.get("grace_period", 1), raw.get("reduction_factor", 2)
    max_t = raw.get("max_t")
    epochs = base.train.epochs
    if not isinstance(grace, int) or isinstance(grace, bool) or grace < 1:
        raise space_error(
            source, "search.scheduler.grace_period", "must be an integer >= 1", grace
        )
    if not isinstance(factor, int | float) or isinstance(factor, bool) or factor < 2:
        raise space_error(source, "search.scheduler.reduction_factor", "must be >= 2", factor)
    if max_t is not None and (isinstance(max_t, bool) or max_t != epochs):
        raise space_error(
            source,
            "search.scheduler.max_t",
            f"must be null or `epochs` ({epochs}): ASHA ends every trial at max_t, so with "
            "fewer no trial would finish its training and nothing would be registered",
            max_t,
        )
    if grace > epochs:
        raise space_error(
            source, "search.scheduler.grace_period", f"must be <= epochs ({epochs})", grace
        )
    return SchedulerSpec(kind, grace, int(factor), max_t)


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
            raise space_error(
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
            raise space_error(
                source,
                "search.metric",
                "val_dsb_score needs every trial to score DSB2018 instances every epoch "
                f"(`dsb_every: 1`, `num_classes` <= 2), but a trial has dsb_every={dsb_every}, "
                f"num_classes={classes}",
                metric,
            )


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
        raise space_error(source, key, NAME_RULE, name)
    return name


def check_combinations(spec: SearchSpec, source: str) -> None:
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
            raise space_error(
                source, "search.baseline", f"cannot run with these fixed settings ({err})"
            ) from None
