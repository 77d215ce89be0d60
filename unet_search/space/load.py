"""Read a search space: YAML or text, ``--set`` overrides, the Optuna sampler, and the plan that
fills a space's ``auto`` settings from its dataset."""

from __future__ import annotations

import math
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from unet_search.core.config import (
    PRESETS,
    RunConfig,
    blame_override,
    check_override,
    flat_leaves,
    load_yaml,
    override_error,
    read_yaml,
    similar,
)
from unet_search.core.errors import ConfigError
from unet_search.core.sections import AUTO, AutoSetting, auto_rule
from unet_search.data.dataset import DatasetArrays
from unet_search.plan.planner import Plan, default_budget, make_plan, parse_budget
from unet_search.plan.profile import profile_data
from unet_search.space.settings import (
    FINAL_FIT_SHARE,
    ComputeSpec,
    SchedulerSpec,
    SearchSettings,
)
from unet_search.space.spec import PROVISIONAL, SearchSpec
from unet_search.space.validate import (
    check_combinations,
    check_name,
    only_keys,
    parse_params,
    parse_settings,
    space_error,
)

__all__ = ["make_sampler", "load_space", "plan_space", "load_space_text"]


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


@dataclass
class _Overrides:
    """What the user's ``--set`` said: the typed text of each key it set (a run-config leaf,
    or a ``search.`` path), and the lines saying what of the space yielded to it."""

    typed: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _apply_overrides(raw: dict[str, Any], overrides: Iterable[str], source: str) -> _Overrides:
    """``search.num_samples=3`` / ``search.scheduler.max_t=2`` set search settings; any other
    ``key=value`` (a run-config key) sets a fixed setting, and a searched one is taken out of
    the search (its conditions on other parameters decided by the value)."""
    given = _Overrides()
    for text in overrides:
        if text.startswith("search."):
            key, _, value = text.partition("=")
            parts = key.split(".")[1:]
            _check_search_key(parts, text)
            node = raw.setdefault("search", {}) or {}
            raw["search"] = node
            for part in parts[:-1]:
                child = node.get(part)
                node[part] = child = dict(child) if isinstance(child, Mapping) else {}
                node = child
            node[parts[-1]] = load_yaml(value) if value.strip() else ""
            given.typed[key] = text
            continue
        leaf, value = check_override(text)
        given.typed[leaf] = text
        params = raw.get("params")
        if isinstance(params, Mapping) and leaf in params:
            raw["params"] = _fix_param(dict(params), leaf, value)
            given.notes.append(
                f"--set {text}: `{leaf}` is searched by {Path(source).name}; fixed at "
                f"{value!r}, out of the search"
            )
        fixed = dict(raw.get("fixed") or {})
        if leaf != "preset":
            fixed.pop(leaf, None)
            for section in fixed.values():  # a nested section naming it in the file
                if isinstance(section, dict):
                    section.pop(leaf, None)
        fixed[leaf] = value
        raw["fixed"] = fixed
    return given


def _check_search_key(parts: list[str], text: str) -> None:
    """A ``--set search.KEY=VALUE`` key path: every part a key of its section."""
    sections: dict[str, Any] = {"scheduler": SchedulerSpec, "compute": ComputeSpec}
    valid: Iterable[str] = SearchSettings.model_fields
    for depth, part in enumerate(parts):
        if not part or part not in valid:
            key = ".".join(["search", *parts[: depth + 1]])
            raise override_error(text, f"unknown key `{key}`; {similar(part, valid)}")
        if part not in sections or depth == len(parts) - 1:
            if depth < len(parts) - 1:
                raise override_error(text, f"`search.{part}` has no keys below it")
            return
        valid = sections[part].model_fields


def _fix_param(params: dict[str, Any], leaf: str, value: Any) -> dict[str, Any]:
    """``params`` without ``leaf``; a parameter whose ``when`` names it keeps the alternatives
    whose condition ``value`` meets (that condition dropped), the rest go."""
    del params[leaf]
    out: dict[str, Any] = {}
    for name, spec in params.items():
        alternatives = spec if isinstance(spec, list) else [spec]
        kept = []
        for alt in alternatives:
            when = alt.get("when") if isinstance(alt, Mapping) else None
            if not isinstance(when, Mapping) or leaf not in when:
                kept.append(alt)
                continue
            allowed = when[leaf] if isinstance(when[leaf], list) else [when[leaf]]
            if value in allowed:
                rest = {k: v for k, v in when.items() if k != leaf}
                kept.append(
                    {k: v for k, v in alt.items() if k != "when"}
                    | ({"when": rest} if rest else {})
                )
        if kept:
            out[name] = kept if isinstance(spec, list) and len(kept) > 1 else kept[0]
    return out


def load_space(
    path: Path,
    overrides: Iterable[str] = (),
    plan: Plan | None = None,
    *,
    combinations: bool = True,
) -> SearchSpec:
    """Read and validate a search-space YAML (plus ``--set`` overrides); raises ConfigError
    naming the file, the key and the rule. Settings given as ``auto`` take ``plan``'s values,
    or provisional ones without a plan (``spec.auto`` names them: plan, then load again).
    ``combinations=False`` skips the walk over every model combination (seconds for a large
    space, and smp's import): for a space a search already ran, read back for its report."""
    path = Path(path)
    raw = read_yaml(path)
    source = str(path)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: must be a mapping with `params` and `search`.")
    raw = dict(raw)
    file_epochs = _epochs_of(raw.get("fixed"), source)
    given = _apply_overrides(raw, overrides, source)
    try:
        spec = _read_space(raw, path, given, file_epochs)
        if combinations:
            check_combinations(spec, source)
    except ConfigError as err:
        raise blame_override(err, given.typed, source) from None  # names the --set
    return spec


def _read_space(
    raw: dict[str, Any], path: Path, given: _Overrides, file_epochs: int
) -> SearchSpec:
    source = str(path)
    only_keys(raw, {"name", "model_name", "description", "fixed", "params", "search"}, source, "")
    name = raw.get("name", path.stem)
    check_name(name, source, "name")
    fixed_raw = raw.get("fixed") or {}
    if not isinstance(fixed_raw, Mapping):
        raise space_error(source, "fixed", "must be a mapping of run-config keys", fixed_raw)
    leaves = flat_leaves(fixed_raw, f"{source}: fixed")
    auto = _fill_auto(leaves, raw, source)
    _yield_to_the_user(raw, leaves, given, file_epochs, path.name)
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
    return SearchSpec(
        name=name,
        model_name=str(raw.get("model_name", f"unet-{name}")),
        description=str(raw.get("description", "")),
        source=path.read_text(encoding="utf-8"),
        fixed=tuple(sorted(fixed.items())),
        params=parse_params(raw.get("params"), explicit, source),
        settings=parse_settings(raw.get("search"), base, source),
        auto=auto,
        notes=tuple(given.notes),
    )


def _epochs_of(fixed: Any, source: str) -> int:
    """The trials' epochs a space file's ``fixed`` gives (the default when it gives none)."""
    default: int = RunConfig().train.epochs
    try:
        value = flat_leaves(fixed, source).get("epochs", default) if fixed else default
    except ConfigError:  # reported, with its key, when the space is read
        return default
    return value if isinstance(value, int) else default


# Says that a value of the space (key, its value) yielded to (why), and what it is now.
Yields = Callable[[str, object, object, str], None]


def _yield_to_the_user(
    raw: dict[str, Any], leaves: dict[str, Any], given: _Overrides, file_epochs: int, name: str
) -> None:
    """Values the space set itself give way to the user's ``--set`` where they would make it
    impossible or pointless (a value the user gave never changes; each change one note in
    ``given``): the compute budget and the trials' epochs, the metric of the objectives, the
    scheduler's grace period and ``max_t``. A space at odds with itself, the user's
    ``--set`` aside, is its author's to mend: the rules' errors name it."""
    search = raw.get("search")
    epochs = leaves.get("epochs", RunConfig().train.epochs)
    if not isinstance(search, Mapping) or not isinstance(epochs, int):
        return
    search = raw["search"] = dict(search)

    def yields(key: str, old: object, new: object, why: str) -> None:
        given.notes.append(f"`{key}` {old} of {name} yields to {why}: {new}")

    moved = "epochs" in given.typed and epochs != file_epochs  # the trials' epochs
    if _shrink_compute(search, leaves, given.typed, file_epochs, moved, yields):
        moved = True
    _follow_objectives(search, given.typed, yields)
    if moved:
        _follow_epochs(search, leaves["epochs"], given.typed, yields)


def _shrink_compute(
    search: dict[str, Any],
    leaves: dict[str, Any],
    user: Mapping[str, str],
    file_epochs: int,
    moved: bool,
    yields: Yields,
) -> bool:
    """The space's ``compute.epochs`` scales with the user's trial ``epochs`` (its trials
    were so many of the space's length); the space's ``epochs`` shrink to fit the user's
    smaller budget's exploring share. Returns whether the trials' epochs moved here."""
    compute = search.get("compute")
    if not isinstance(compute, Mapping):
        return False
    budget, share = compute.get("epochs"), search.get("final_fit", FINAL_FIT_SHARE)
    if not isinstance(budget, int) or not isinstance(share, int | float) or not 0 <= share < 1:
        return False  # what is not a number is the rules' to name
    epochs = leaves.get("epochs", RunConfig().train.epochs)
    user_budget = any(k in user for k in ("search.compute", "search.compute.epochs"))
    if moved and not user_budget:
        scaled = max(1, math.ceil(budget * epochs / file_epochs))
        while round(scaled * (1 - share)) < epochs:
            scaled += 1
        search["compute"] = {**compute, "epochs": scaled}
        yields("search.compute.epochs", budget, scaled, f"--set {user['epochs']}")
    elif user_budget and "epochs" not in user:
        exploring = round(budget * (1 - share))
        if 1 <= exploring < epochs:
            leaves["epochs"] = exploring
            text = user.get("search.compute.epochs") or user["search.compute"]
            yields("epochs", file_epochs, exploring, f"--set {text} (its exploring share)")
            return True
    return False


def _follow_objectives(search: dict[str, Any], user: Mapping[str, str], yields: Yields) -> None:
    """``--set search.objectives``: the space's ``metric`` and ``mode`` are the first
    objective's from then on (objectives replace them)."""
    objectives = search.get("objectives")
    if "search.objectives" not in user or not isinstance(objectives, list) or not objectives:
        return
    first = objectives[0].get("metric") if isinstance(objectives[0], Mapping) else None
    for key in ("metric", "mode"):
        if key in search and f"search.{key}" not in user:
            value = search.pop(key)
            if key == "metric" and value != first:
                why = f"--set {user['search.objectives']} (its first objective)"
                yields("search.metric", value, first, why)


def _follow_epochs(
    search: dict[str, Any], epochs: int, user: Mapping[str, str], yields: Yields
) -> None:
    """The space's grace period and ``max_t`` follow trials' epochs the user moved."""
    scheduler = search.get("scheduler")
    if not isinstance(scheduler, Mapping) or "search.scheduler" in user:
        return
    scheduler = search["scheduler"] = dict(scheduler)
    grace = scheduler.get("grace_period")
    if isinstance(grace, int) and grace > epochs and "search.scheduler.grace_period" not in user:
        scheduler["grace_period"] = epochs
        yields("search.scheduler.grace_period", grace, epochs, f"the trials' epochs ({epochs})")
    max_t = scheduler.get("max_t")
    if isinstance(max_t, int) and max_t != epochs and "search.scheduler.max_t" not in user:
        scheduler["max_t"] = None
        yields("search.scheduler.max_t", max_t, epochs, f"the trials' epochs ({epochs})")


def plan_space(spec: SearchSpec, arrays: DatasetArrays, budget: str | None = None) -> SearchSpec:
    """The space with its ``auto`` settings filled from ``arrays``' plan within ``budget``
    (default: ``search.budget``, else :func:`unet_search.plan.planner.default_budget`); a space
    without ``auto``, or already planned, comes back as it is."""
    if not spec.auto or spec.plan is not None:
        return spec
    name = budget or spec.settings.budget
    chosen = (
        parse_budget(name)
        if name
        else default_budget(uses_gpus=spec.max_workers_cpus_gpus()[1] > 0)
    )
    stats = profile_data(arrays, spec.base_config().data)
    planned = spec.with_plan(make_plan(stats, chosen, spec.plan_given()))
    check_combinations(planned, f"{spec.name}.yaml planned ({planned.settings.budget})")
    return planned


def _fill_auto(
    leaves: dict[str, Any], raw: dict[str, Any], source: str
) -> tuple[AutoSetting, ...]:
    """Replace ``auto`` in the fixed ``leaves`` and in a searched depth's bounds (in ``raw``)
    by :data:`PROVISIONAL` values; returns what was ``auto``."""
    auto: list[AutoSetting] = []
    for leaf, value in leaves.items():
        if value == AUTO:
            if why := auto_rule(leaf):
                raise space_error(source, f"fixed.{leaf}", why)
            auto.append(AutoSetting(leaf))
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
                    raise space_error(
                        source,
                        f"{where}.{bound}",
                        "cannot be `auto`; only the bounds of an int `depth` are planned",
                    )
                key = name if not isinstance(spec, list) else f"{name}:{i}"
                alt[bound] = PROVISIONAL[f"depth.{bound}"]
                auto.append(AutoSetting(key, bound))
            filled.append(alt)
        params[name] = filled if isinstance(spec, list) else filled[0]
    raw["params"] = params
    return tuple(auto)


def load_space_text(
    text: str, file_name: str, overrides: Iterable[str] = (), *, combinations: bool = True
) -> SearchSpec:
    """:func:`load_space` of a space saved as text (e.g. a search's ``space.yaml`` read back
    from MLflow); ``file_name`` (``<space name>.yaml``) names it in errors and gives the name."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(file_name).name
        path.write_text(text, encoding="utf-8")
        return load_space(path, overrides, combinations=combinations)


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
