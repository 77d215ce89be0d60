"""The ``search:`` section of a space file, validated and frozen: the trials, the metric,
the sampler, the scheduler, the plan's budget, the compute and the final fit
(:mod:`unet_search.space.spec` documents every key)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Self

from pydantic import BeforeValidator, Field, model_validator

from unet_search.core.config import PRESETS
from unet_search.core.metrics import METRICS
from unet_search.core.schema import Frozen, at_least, between, broken, choice, rule
from unet_search.core.sections import Size

__all__ = [
    "ComputeSpec",
    "ConstraintSpec",
    "LIMITED",
    "ObjectiveSpec",
    "PICKS",
    "FINAL_FIT_SHARE",
    "FINAL_FIT_STARTS",
    "INCUMBENT_MARGIN",
    "SAMPLERS",
    "SCHEDULERS",
    "SchedulerSpec",
    "SEARCHABLE",
    "SearchSettings",
]


SAMPLERS = ("tpe", "random")
SEARCHABLE = sorted(name for name, metric in METRICS.items() if metric.searchable)


SCHEDULERS = ("asha", "asha_stopping", "fifo")  # see unet_search.search.asha


def _no_baseline(value: Any) -> Any:
    return None if value == "none" else value


class SchedulerSpec(Frozen):
    """The trial scheduler (``search.scheduler``); the rules that need the trials' epochs are
    :func:`unet_search.space.validate.check_scheduler`'s."""

    section = "search.scheduler"
    type: Annotated[str, choice(SCHEDULERS)] = "asha"  # asha | asha_stopping | fifo
    grace_period: Annotated[int, at_least(1)] = 1
    reduction_factor: Annotated[int, at_least(2)] = 2
    max_t: int | None = None  # None: the trials' epochs


class ComputeSpec(Frozen):
    """The search's compute (``search.compute``): training epochs of the planned patches,
    summed over every trial but the seed baseline and the final fit, and/or wall-clock hours
    from the search's start (``time_budget_s`` is Tune's hard stop of the trials; ``hours``
    ends exploring gracefully and leaves the final fit its share)."""

    section = "search.compute"
    epochs: Annotated[int, at_least(1)] | None = None
    hours: Annotated[float, rule("must be > 0", lambda v: v > 0)] | None = None

    @model_validator(mode="after")
    def _some(self) -> Self:
        if self.epochs is None and self.hours is None:
            raise broken("search.compute", "needs `epochs` or `hours` (or both)", {})
        return self


# Of search.compute, see SearchSettings.final_fit. Measured (bench 12, 24 epochs, one seed):
# 0.7 beat 0.5 on both synthetic styles (hard 0.9422 vs 0.9321, fluorescence 0.9802 vs
# 0.9767 held-out Dice): at small budgets a trained-on winner is worth more than more trials.
FINAL_FIT_SHARE = 0.7

# Of SearchSettings.incumbent_margin: the validation noise of two exploring trials' early
# values (bench/README.md, "12, the incumbent"): the planned default's best validation Dice
# at epochs 2-4 over training seeds 0-2 spreads by a standard deviation of 0.076 (median of
# three sets: satellite tiles, cells, synthetic hard), so the difference of two trials by
# 0.076 x sqrt 2 = 0.11. The synthetic searches' winners led the default by +0.27 to +0.30
# at epoch 2; on the real sets most challengers were within 0.13.
INCUMBENT_MARGIN = 0.1


FINAL_FIT_STARTS = ("continue", "kept", "scratch")  # see unet_search.search.final

# What a limit may be put on: known before a trial trains (the built model's trainable
# parameters; the untrained model's latency, which does not depend on its weights).
LIMITED = ("num_parameters", "inference_ms")


class ConstraintSpec(Frozen):
    """A limit a trial must keep (``search.constraints`` items): ``metric`` at most ``max``,
    checked before the trial's first epoch."""

    section = "search.constraints"
    metric: Annotated[str, choice(LIMITED)]
    max: Annotated[float, rule("must be > 0", lambda v: v > 0)]


class ObjectiveSpec(Frozen):
    """One objective of a multi-objective search (``search.objectives`` items): a searchable
    validation metric or a limited one (``num_parameters``, ``inference_ms``), and its mode
    (the metric's own: a reversed one is an error)."""

    section = "search.objectives"
    metric: Annotated[str, choice([*SEARCHABLE, *LIMITED])]
    mode: str = ""

    @model_validator(mode="after")
    def _its_mode(self) -> Self:
        wanted = METRICS[self.metric].mode if self.metric in METRICS else "min"
        if self.mode not in ("", wanted):
            raise broken(".mode", f"must be {wanted!r} for {self.metric}", self.mode)
        if not self.mode:
            object.__setattr__(self, "mode", wanted)
        return self


# How the registered model is chosen from a multi-objective search's front: the best first
# objective within the constraints, or the knee (the front's point farthest from the line
# through its two ends, each objective scaled to [0, 1]).
PICKS = ("best", "knee")


def _items(key: str, spec: type[Frozen], value: Any) -> tuple[Any, ...]:
    """Each item of a list of mappings validated where it stands (``key[1].max``)."""
    if not isinstance(value, list | tuple):
        raise broken(key, "must be a list of mappings", value)
    out = []
    for i, item in enumerate(value):
        if isinstance(item, spec):
            out.append(item)
        elif isinstance(item, dict):
            out.append(spec.validated(item, f"{key}[{i}]"))
        else:
            raise broken(f"{key}[{i}]", "must be a mapping", item)
    return tuple(out)


def _objectives(value: Any) -> Any:
    return _items("search.objectives", ObjectiveSpec, value)


def _first_metric(objectives: Any) -> Any:
    first = objectives[0] if isinstance(objectives, list | tuple) and objectives else None
    if isinstance(first, ObjectiveSpec):
        return first.metric
    return first.get("metric") if isinstance(first, dict) else None


def _constraints(value: Any) -> Any:
    return _items("search.constraints", ConstraintSpec, value)


class SearchSettings(Frozen):
    """The ``search`` section of a space: how many trials, ranked by what, sampled how."""

    section = "search"
    num_samples: Annotated[int, between(1, 100_000)] = 8
    metric: Annotated[str, choice(SEARCHABLE)] = "val_dice"
    mode: str = "max"
    seed: Annotated[int, between(0, 2**31)] = 0
    baseline: Annotated[
        str | None,
        BeforeValidator(_no_baseline),
        rule(f"must be `none` or a preset {sorted(PRESETS)}", lambda v: v in (None, *PRESETS)),
    ] = "seed_keras"
    sampler: Annotated[str, choice(SAMPLERS)] = "tpe"  # random: a control to compare against
    startup_trials: Annotated[int, at_least(0)] | None = None  # see tpe_startup_trials
    max_concurrent_trials: Annotated[int, at_least(1)] | None = None
    time_budget_s: Annotated[float, rule("must be > 0", lambda v: v > 0)] | None = None
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    budget: str | None = None  # the plan's compute budget (plan.planner); None: the default
    compute: ComputeSpec | None = None  # None: no final fit, the trials' epochs as given
    # The share of `compute` the final fit of the best configuration gets (the rest explores).
    final_fit: Annotated[float, between(0.0, 0.9)] = FINAL_FIT_SHARE
    # The final fit starts from the best trial's kept weights, or from scratch.
    final_fit_start: Annotated[str, choice(FINAL_FIT_STARTS)] = "kept"
    default_trial: bool = True  # the planned default configuration is a candidate (trial 1)
    # The planned default is the incumbent: the final fit trains on a challenger only when
    # it beat the default at equal epochs by more than this (the validation noise,
    # unet_search.search.incumbent); null: the best exploring trial by value.
    incumbent_margin: Annotated[float, between(0.0, 1.0)] | None = INCUMBENT_MARGIN
    # On a binary val_dice search a model below Otsu's validation Dice is only a challenger.
    champion_must_beat_otsu: bool = True
    # The registered model carries its ONNX export (onnx/), checked against PyTorch on a
    # validation image (unet_search.serve.onnx): a few seconds at registration.
    onnx: bool = True
    # inference_ms: the median ms per image of this size through the predictor, measured
    # in every trial before its first epoch (unet_search.train.latency)
    latency_image: Size = (512, 512)
    constraints: Annotated[tuple[ConstraintSpec, ...], BeforeValidator(_constraints)] = ()
    # Several objectives (replace `metric` and `mode`; the first is the search metric: the
    # final fit, the champion gate and `best` follow it): a Pareto front (unet_search.search.
    # pareto), multi-objective TPE, ASHA by non-dominated sorting (MO-ASHA).
    objectives: Annotated[tuple[ObjectiveSpec, ...], BeforeValidator(_objectives)] = ()
    pick: Annotated[str, choice(PICKS)] = "best"  # the registered model, from the front

    @model_validator(mode="before")
    @classmethod
    def _mode_of_metric(cls, raw: Any) -> Any:
        """The mode follows the metric; another is an error (not silently reversed). With
        ``objectives`` the first one is the metric, and ``metric``/``mode`` may not be given."""
        if not isinstance(raw, dict):
            return raw
        if raw.get("objectives"):
            given = [f"search.{key}" for key in ("metric", "mode") if key in raw]
            if given:
                raise broken(
                    "search.objectives",
                    f"replace {' and '.join(f'`{k}`' for k in given)}: give one or the other",
                    raw["objectives"],
                )
            metric = _first_metric(raw["objectives"])
            if metric in SEARCHABLE:  # else the objectives' own check names it
                raw = {**raw, "metric": metric}
        if "mode" not in raw and raw.get("metric") in METRICS:
            return {**raw, "mode": METRICS[raw["metric"]].mode}
        return raw

    def with_values(self, **changes: Any) -> Self:
        """A copy with ``changes`` (see :meth:`Frozen.with_values`); with ``objectives`` the
        metric and mode are theirs, derived again, not given (they may not be given)."""
        kept = {name: getattr(self, name) for name in self.model_fields_set}
        if self.objectives:
            kept = {k: v for k, v in kept.items() if k not in ("metric", "mode")}
        return type(self)(**{**kept, **changes})

    @model_validator(mode="after")
    def _mode(self) -> Self:
        wanted = METRICS[self.metric].mode
        if self.mode != wanted:
            raise broken("search.mode", f"must be {wanted!r} for {self.metric}", self.mode)
        return self

    @model_validator(mode="after")
    def _front(self) -> Self:
        if self.pick == "knee" and len(self.objectives) < 2:
            raise broken("search.pick", "`knee` needs two or more `objectives`", self.pick)
        if self.objectives and self.objectives[0].metric not in SEARCHABLE:
            raise broken(
                "search.objectives[0].metric",
                f"must be one of {SEARCHABLE}: the first objective is the search metric",
                self.objectives[0].metric,
            )
        if len(self.objectives) > 1 and self.scheduler.type == "asha_stopping":
            raise broken(
                "search.scheduler.type",
                "`asha_stopping` ranks one metric: use `asha` (MO-ASHA) or `fifo` with several"
                " objectives",
                self.scheduler.type,
            )
        return self

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def objective_pairs(self) -> tuple[tuple[str, str], ...]:
        """(metric, mode) of every objective: the search metric alone without ``objectives``."""
        if self.objectives:
            return tuple((o.metric, o.mode) for o in self.objectives)
        return ((self.metric, self.mode),)

    @property
    def explore_epochs(self) -> int | None:
        """The epochs of ``compute.epochs`` the exploring trials may spend (None: no limit);
        the final fit gets what they leave."""
        if self.compute is None or self.compute.epochs is None:
            return None
        return round(self.compute.epochs * (1.0 - self.final_fit))

    def schedule_epochs(self, epochs: int) -> int:
        """The epochs an exploring trial's LR schedule spans: with a final fit that goes on
        from where its source stopped (``final_fit_start: continue``) the search's whole
        compute (``compute.epochs``, else ``epochs / (1 - final_fit)``), so that the best
        exploring trial and its final fit are one long run, as the planned default trained
        alone would be; else 0 (the trial's own epochs)."""
        if self.compute is None or self.final_fit_start != "continue" or self.final_fit == 0:
            return 0
        if self.compute.epochs is not None:
            return max(self.compute.epochs, epochs)
        return math.ceil(epochs / (1.0 - self.final_fit))

    @property
    def explore_seconds(self) -> float | None:
        """The wall-clock seconds of ``compute.hours`` the exploring trials may take."""
        if self.compute is None or self.compute.hours is None:
            return None
        return self.compute.hours * 3600.0 * (1.0 - self.final_fit)

    @property
    def tpe_startup_trials(self) -> int:
        """Trials TPE samples at random before it models the results: ``startup_trials``,
        or a quarter of the search (2 to 10). Optuna's fixed 10 left an 8-trial search random
        throughout, and a budget of ~16 full trials mostly random."""
        if self.startup_trials is not None:
            return self.startup_trials
        return max(2, min(10, self.num_samples // 4))
