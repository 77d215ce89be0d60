"""Read a search space: YAML or text, ``--set`` overrides, the Optuna sampler, and the plan that
fills a space's ``auto`` settings from its dataset."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import optuna
import yaml

from unet_search.core.config import (
    PRESETS,
    RunConfig,
    flat_leaves,
    parse_override,
    read_yaml,
)
from unet_search.core.errors import ConfigError
from unet_search.core.sections import AUTO, PLANNED_LEAVES
from unet_search.data.dataset import DatasetArrays
from unet_search.space.settings import SearchSettings
from unet_search.space.spec import PROVISIONAL, SearchSpec
from unet_search.space.validate import (
    check_combinations,
    check_name,
    only_keys,
    parse_params,
    parse_settings,
    space_error,
)
from unet_search.train.fingerprint import data_stats
from unet_search.train.plan import Plan, default_budget, make_plan, parse_budget

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
    _apply_overrides(raw, overrides)
    only_keys(raw, {"name", "model_name", "description", "fixed", "params", "search"}, source, "")
    name = raw.get("name", path.stem)
    check_name(name, source, "name")
    fixed_raw = raw.get("fixed") or {}
    if not isinstance(fixed_raw, Mapping):
        raise space_error(source, "fixed", "must be a mapping of run-config keys", fixed_raw)
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
        params=parse_params(raw.get("params"), explicit, source),
        settings=parse_settings(raw.get("search"), base, source),
        auto=auto,
    )
    if combinations:
        check_combinations(spec, source)
    return spec


def plan_space(spec: SearchSpec, arrays: DatasetArrays, budget: str | None = None) -> SearchSpec:
    """The space with its ``auto`` settings filled from ``arrays``' plan within ``budget``
    (default: ``search.budget``, else :func:`unet_search.train.plan.default_budget`); a space
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
    planned = spec.with_plan(make_plan(stats, chosen, spec.plan_given()))
    check_combinations(planned, f"{spec.name}.yaml planned ({planned.settings.budget})")
    return planned


def _fill_auto(leaves: dict[str, Any], raw: dict[str, Any], source: str) -> tuple[str, ...]:
    """Replace ``auto`` in the fixed ``leaves`` and in a searched depth's bounds (in ``raw``)
    by :data:`PROVISIONAL` values; returns what was ``auto``."""
    auto: list[str] = []
    for leaf, value in leaves.items():
        if value == AUTO:
            if leaf not in PLANNED_LEAVES:
                raise space_error(
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
                    raise space_error(
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
