"""The rules of a space file: keys, parameter types and ranges, conditions, the search
settings and scheduler, the metric, and combinations that cannot build a model. Every error
names the file, the key, the rule and the value received."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unet_search.core.config import (
    LEAF_SECTION,
    RunConfig,
)
from unet_search.core.errors import ConfigError, UserError
from unet_search.core.metrics import INSTANCE_METRICS, dsb_rule
from unet_search.core.schema import validated_union
from unet_search.models.build import validate_model_config
from unet_search.plan.planner import parse_budget
from unet_search.space.role import TrialRole
from unet_search.space.settings import ComputeSpec, SchedulerSpec, SearchSettings
from unet_search.space.spec import (
    MAX_COMBINATIONS,
    MODEL_FIELDS,
    PARAM_TYPES,
    SPACE_PARAM,
    ParamSpec,
    SearchSpec,
)

__all__ = [
    "check_combinations",
    "check_compute",
    "check_name",
    "check_scheduler",
    "LOSS_FIELDS",
    "NAME_RULE",
    "only_keys",
    "parse_params",
    "parse_settings",
    "space_error",
]


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
    try:
        checked = validated_union(SPACE_PARAM, dict(raw), where, PARAM_TYPES)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    key = name if index is None else f"{name}:{index}"
    return checked.spec(name, key, _when(raw.get("when", {}), where, earlier, source))


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


def parse_settings(raw: Any, base: RunConfig, source: str) -> SearchSettings:
    """The ``search`` section (:class:`SearchSettings`'s rules), its scheduler checked against
    the trials' epochs."""
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise space_error(source, "search", "must be a mapping", raw)
    only_keys(raw, set(SearchSettings.model_fields), source, "search.")
    scheduler = {"type": "asha"} if raw.get("scheduler") is None else raw["scheduler"]
    if not isinstance(scheduler, Mapping):
        raise space_error(source, "search.scheduler", "must be a mapping", scheduler)
    only_keys(scheduler, set(SchedulerSpec.model_fields), source, "search.scheduler.")
    plan_budget = raw.get("budget")
    if plan_budget is not None:
        try:
            parse_budget(str(plan_budget))
        except UserError as err:
            raise space_error(
                source, "search.budget", str(err).partition(": ")[2].rstrip(".")
            ) from None
    compute = raw.get("compute")
    if compute is not None and not isinstance(compute, Mapping):
        raise space_error(source, "search.compute", "must be a mapping", compute)
    if compute is not None:
        only_keys(compute, set(ComputeSpec.model_fields), source, "search.compute.")
    try:
        values = {**raw, "scheduler": SchedulerSpec(**scheduler)}
        if compute is not None:
            values["compute"] = ComputeSpec(**compute)
        if plan_budget is not None:
            values["budget"] = str(plan_budget)
        settings = SearchSettings(**values)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    check_scheduler(settings.scheduler, base.train.epochs, source)
    check_compute(settings, base.train.epochs, source)
    return settings


def check_compute(settings: SearchSettings, epochs: int, source: str) -> None:
    """``search.compute`` must leave the exploring trials one whole trial (``epochs``) and
    its ``hours`` cannot sit beside Tune's hard ``time_budget_s``."""
    compute = settings.compute
    if compute is None:
        return
    if compute.hours is not None and settings.time_budget_s is not None:
        raise space_error(
            source,
            "search.compute.hours",
            "cannot be combined with `search.time_budget_s` (Tune's hard stop of the trials, "
            "which would cut the final fit short); give one of them",
            compute.hours,
        )
    exploring = settings.explore_epochs
    if exploring is not None and exploring < epochs:
        raise space_error(
            source,
            "search.compute.epochs",
            f"must leave the exploring trials ({1 - settings.final_fit:g} of it, "
            f"{exploring} epochs) at least one whole trial (`epochs` = {epochs})",
            compute.epochs,
        )


def check_scheduler(scheduler: SchedulerSpec, epochs: int, source: str) -> None:
    """``max_t`` and the grace period against the trials' ``epochs``."""
    max_t = scheduler.max_t
    if max_t is not None and max_t != epochs:
        raise space_error(
            source,
            "search.scheduler.max_t",
            f"must be null or `epochs` ({epochs}): ASHA ends every trial at max_t, so with "
            "fewer no trial would finish its training and nothing would be registered",
            max_t,
        )
    if scheduler.grace_period > epochs:
        raise space_error(
            source,
            "search.scheduler.grace_period",
            f"must be <= epochs ({epochs})",
            scheduler.grace_period,
        )


LOSS_FIELDS = ("loss", "dice_weight", "focal_gamma", "tversky_alpha", "tversky_beta")


def _check_metric(spec: SearchSpec, source: str) -> None:
    """Refuse a search metric that cannot rank its trials: an instance metric
    (``val_dsb_score``, ``val_ap50``) where a trial
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
    if metric not in INSTANCE_METRICS:
        return
    trials = [
        {**spec.fixed_dict, **combo} for combo in spec.combinations({"dsb_every", "num_classes"})
    ]
    if spec.settings.baseline is not None:
        trials.append({**spec.fixed_dict, **spec.baseline_leaves()})
    defaults = RunConfig().flat()
    for leaves in trials:
        why = dsb_rule(
            leaves.get("dsb_every", defaults["dsb_every"]),
            leaves.get("num_classes", defaults["num_classes"]),
            metric,
        )
        if why:
            raise space_error(source, "search.metric", f"{why} in a trial", metric)


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


# Leaves SearchSpec.run_config treats specially (it is not a plain replace for these).
RUN_CONFIG_RULES = frozenset({"input_mode", "image_size", "early_stop_metric"})


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
    shared = spec.run_config(base, source="combination")
    for count, combo in enumerate(spec.combinations(MODEL_FIELDS)):
        if count >= MAX_COMBINATIONS:
            break
        try:
            if combo.keys() & RUN_CONFIG_RULES:
                cfg = spec.run_config({**base, **combo}, source="combination")
            else:  # the same config, its untouched sections not validated again
                cfg = shared.replace(**combo)
            validate_model_config(cfg.model)
        except ConfigError as err:
            message = str(err).removeprefix("combination: ").removeprefix("replace: ")
            if not combo:  # nothing searched takes part: the fixed settings alone
                raise ConfigError(f"{source}: fixed: {message}") from None
            shown = ", ".join(f"{k}: {v!r}" for k, v in combo.items())
            raise ConfigError(
                f"{source}: the combination {{{shown}}} is impossible: "
                f"{message} Restrict it with `when`."
            ) from None
    if spec.settings.baseline is not None:
        try:
            cfg = spec.trial(TrialRole(baseline=True).keys()).run
            validate_model_config(cfg.model)
        except ConfigError as err:
            raise space_error(
                source, "search.baseline", f"cannot run with these fixed settings ({err})"
            ) from None
