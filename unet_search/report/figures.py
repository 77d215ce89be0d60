"""The report's figures, drawn with matplotlib's object API (no pyplot state): best-so-far,
parallel coordinates, fANOVA importance and trial cost."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, ScalarFormatter

from unet_search.core.metrics import best_key, sign
from unet_search.core.outcome import Outcome
from unet_search.report.data import ReportData
from unet_search.search.pareto import fronts
from unet_search.space.settings import LIMITED
from unet_search.space.spec import ParamSpec, SearchSpec
from unet_search.tracking.read import TrialRecord

__all__ = [
    "BASELINE_COLOR",
    "fig_best_so_far",
    "fig_cost",
    "fig_front",
    "front_trials",
    "objective_value",
    "fig_importance",
    "fig_parallel",
    "OUTCOME_STYLE",
    "param_importances",
    "sampled_params",
    "trial_cost",
]


OUTCOME_STYLE = {
    Outcome.FINISHED: ("tab:blue", "o"),
    Outcome.STOPPED_EARLY: ("tab:orange", "v"),
    Outcome.FAILED: ("tab:red", "x"),
    Outcome.INFEASIBLE: ("tab:gray", "x"),
    Outcome.RUNNING: ("tab:gray", "."),
}


BASELINE_COLOR = "tab:green"


def _plain(value: float, _position: object = None) -> str:
    """A tick label people read at once: ``1,942,613``, ``23.5``, ``0.81`` (no offset, no
    scientific notation)."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _value_axis(ax: Axes, which: str, values: Sequence[float], log: bool = False) -> None:
    """An axis of measured values (parameter counts, milliseconds) that reads at a glance: one
    labelled tick where every trial shares the value; a log scale only over more than a
    decade (``log``); plain numbers, never an offset or ``x 10^6``."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return
    lo, hi = min(finite), max(finite)
    if hi - lo <= 1e-9 * max(abs(hi), 1.0):  # one value: one tick, a margin either side
        pad = max(abs(lo) * 0.05, 1.0)
        (ax.set_xlim if which == "x" else ax.set_ylim)(lo - pad, lo + pad)
        axis.set_major_locator(FixedLocator([lo]))
        axis.set_minor_locator(FixedLocator([]))
    elif log and lo > 0 and hi / lo > 10:
        (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    else:
        axis.set_major_locator(MaxNLocator(nbins=6))
    axis.set_major_formatter(FuncFormatter(_plain))
    axis.set_minor_formatter(FuncFormatter(lambda *_: ""))


def _running_best(data: ReportData, values: Sequence[float]) -> list[float]:
    out: list[float] = []
    for v in values:
        out.append(v if not out or data.better(v, out[-1]) else out[-1])
    return out


def _mark_baseline(ax: Axes, data: ReportData) -> None:
    base = next((t for t in data.record.trials if t.baseline), None)
    value = None if base is None else data.value(base)
    if base is not None and value is not None:
        ax.axhline(value, color=BASELINE_COLOR, ls="--", lw=1, label=f"baseline {base.name}")


def fig_best_so_far(data: ReportData) -> Figure:
    """Left: each trial's value and the best so far by trial number. Right: the best value
    seen so far against the total number of epochs trained (all trials, in time order)."""
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    scored = [(t, v) for t in data.record.trials if (v := data.value(t)) is not None]
    for outcome, (color, marker) in OUTCOME_STYLE.items():
        pts = [(t.number, v) for t, v in scored if t.outcome == outcome and not t.baseline]
        if pts:
            ax1.scatter(*zip(*pts, strict=True), c=color, marker=marker, label=outcome, zorder=3)
    for t, v in scored:
        if t.baseline:
            ax1.scatter([t.number], [v], c=BASELINE_COLOR, marker="*", s=160, zorder=4)
    if scored:
        best = _running_best(data, [v for _, v in scored])
        ax1.step([t.number for t, _ in scored], best, where="post", c="k", label="best so far")
    _mark_baseline(ax1, data)
    ax1.set(xlabel="trial number", ylabel=f"best {data.metric}", title="Best so far by trial")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.legend(fontsize=8, loc="lower right")
    points = sorted(
        (ts, v) for t in data.record.trials for ts, _, v in t.history if not math.isnan(v)
    )
    if points:
        epochs = np.arange(1, len(points) + 1)
        ax2.step(epochs, _running_best(data, [v for _, v in points]), where="post", c="k")
        ax2.scatter(epochs, [v for _, v in points], s=6, c="tab:gray", alpha=0.5)
    _mark_baseline(ax2, data)
    ax2.set(
        xlabel="total training epochs (all trials, in time order)",
        ylabel=data.metric,
        title="Best so far by training spent",
    )
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=8, loc="lower right")
    return fig


def _searched(spec: SearchSpec) -> list[str]:
    names: list[str] = []
    for p in spec.params:
        if p.name not in names:
            names.append(p.name)
    return names


def sampled_params(spec: SearchSpec, trial: TrialRecord) -> dict[str, Any]:
    """The parameters the space sampled for this trial (conditions applied), typed."""
    chosen: dict[str, Any] = {}
    for p in spec.params:
        if p.name not in chosen and p.active(chosen) and p.name in trial.params:
            chosen[p.name] = _typed(p, trial.params[p.name])
    return chosen


def _typed(p: ParamSpec, text: str) -> Any:
    if p.type == "choice":
        return next((v for v in p.values if str(v) == text), text)
    if p.type == "int":
        return int(float(text))
    return float(text)


def _axis(specs: list[ParamSpec]) -> tuple[str, list[Any], float, float, bool]:
    """(kind, categories, low, high, log) of one parameter over all its alternatives."""
    if specs[0].type == "choice":
        values: list[Any] = []
        for p in specs:
            values += [v for v in p.values if v not in values]
        return "choice", values, 0.0, float(max(len(values) - 1, 1)), False
    log = any(p.log or p.type == "loguniform" for p in specs)
    return specs[0].type, [], min(p.low for p in specs), max(p.high for p in specs), log


def fig_parallel(data: ReportData) -> Figure:
    """One line per scored non-baseline trial across the sampled parameters (scaled to
    [0, 1]; categories evenly spaced) and the metric; colour = the metric."""
    names = _searched(data.spec)
    axes = {n: _axis([p for p in data.spec.params if p.name == n]) for n in names}
    rows = [
        (t, v, sampled_params(data.spec, t))
        for t in data.record.trials
        if not t.baseline and (v := data.value(t)) is not None
    ]
    fig = Figure(figsize=(max(8, 1.3 * (len(names) + 1)), 4.6), layout="constrained")
    ax = fig.subplots()
    if not rows:
        ax.text(0.5, 0.5, "no scored trials", ha="center")
        return fig
    lo, hi = min(v for _, v, _ in rows), max(v for _, v, _ in rows)
    norm = Normalize(lo, hi if hi > lo else lo + 1e-9)
    cmap = colormaps["viridis"]
    for t, v, chosen in rows:
        ys = [_scaled(axes[n], chosen.get(n)) for n in names] + [float(norm(v))]
        # An axis the trial did not sample (a condition ruled it out) is skipped, not a gap.
        xs = [i for i, y in enumerate(ys) if not math.isnan(y)]
        done = t.outcome == Outcome.FINISHED
        ax.plot(
            xs,
            [ys[i] for i in xs],
            marker="o",
            ms=3,
            color=cmap(float(norm(v))),
            lw=1.6 if done else 1.0,
            ls="-" if done else "--",
            alpha=0.85,
        )
    for i, n in enumerate(names):
        ax.axvline(i, color="k", lw=0.6)
        kind, cats, a_lo, a_hi, _ = axes[n]
        labels = [str(c) for c in cats] if kind == "choice" else [f"{a_lo:g}", f"{a_hi:g}"]
        spots = np.linspace(0, 1, len(cats)) if kind == "choice" and len(cats) > 1 else [0, 1]
        for y, label in zip(spots, labels, strict=False):
            ax.text(i + 0.04, y, label, fontsize=7, va="center")
    ax.axvline(len(names), color="k", lw=0.6)
    ax.set_xticks(range(len(names) + 1), [*names, data.metric], rotation=20)
    ax.set_yticks([])
    ax.set_title("Parallel coordinates (solid: finished, dashed: stopped early)")
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=f"best {data.metric}")
    formatter = ScalarFormatter(useOffset=False)  # 0.8156, not +0.8 and 1e-4 steps
    formatter.set_scientific(False)
    bar.formatter = formatter
    bar.update_ticks()
    return fig


def _scaled(axis: tuple[str, list[Any], float, float, bool], value: Any) -> float:
    kind, cats, lo, hi, log = axis
    if value is None:
        return float("nan")  # not sampled in this trial (a condition ruled it out)
    if kind == "choice":
        return cats.index(value) / max(len(cats) - 1, 1) if value in cats else float("nan")
    if log and lo > 0:
        return (math.log(value) - math.log(lo)) / max(math.log(hi) - math.log(lo), 1e-12)
    return (float(value) - lo) / max(hi - lo, 1e-12)


def param_importances(data: ReportData) -> dict[str, float] | str:
    """Optuna's fANOVA importances on the completed (finished, non-baseline) trials, rebuilt
    as an Optuna study from MLflow; a string saying why when they cannot be computed."""
    names = _searched(data.spec)
    dists: dict[str, optuna.distributions.BaseDistribution] = {}
    for n in names:
        kind, cats, lo, hi, log = _axis([p for p in data.spec.params if p.name == n])
        if kind == "choice":
            dists[n] = optuna.distributions.CategoricalDistribution(cats)
        elif kind == "int":
            dists[n] = optuna.distributions.IntDistribution(int(lo), int(hi), log=log)
        else:
            dists[n] = optuna.distributions.FloatDistribution(lo, hi, log=log)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if data.sign > 0 else "minimize")
    for t in data.record.trials:
        value = data.value(t)
        if t.baseline or t.outcome != Outcome.FINISHED or value is None:
            continue
        chosen = sampled_params(data.spec, t)
        study.add_trial(
            optuna.trial.create_trial(
                params=chosen, distributions={k: dists[k] for k in chosen}, value=value
            )
        )
    if len(study.trials) < 2:
        return (
            "needs at least 2 completed trials of the searched parameters (the seed "
            f"baseline samples none and does not count); this search has {len(study.trials)}."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (ValueError, RuntimeError) as err:
        return f"Optuna could not compute importances: {err}"


def fig_importance(importances: dict[str, float]) -> Figure:
    fig = Figure(figsize=(7, 0.45 * len(importances) + 1.4), layout="constrained")
    ax = fig.subplots()
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set(xlabel="importance (fANOVA, sums to 1)", title="Parameter importance")
    return fig


def fig_cost(data: ReportData) -> Figure:
    """The metric against parameter count and against inference time per image."""
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    rows = [
        (t, v)
        for t in data.record.trials
        if t.outcome == Outcome.FINISHED and (v := data.value(t)) is not None
    ]
    for ax, (key, label, log) in zip(
        axes,
        [
            ("num_parameters", "trainable parameters", True),
            ("inference_ms_per_image", "inference ms per image (trial's own worker)", False),
        ],
        strict=True,
    ):
        pts = [(x, v, t) for t, v in rows if (x := trial_cost(t, key)) is not None]
        for x, v, t in pts:
            color, marker = (BASELINE_COLOR, "*") if t.baseline else ("tab:blue", "o")
            ax.scatter([x], [v], c=color, marker=marker, s=120 if t.baseline else 40)
            tag = t.name.split(" ")[0]
            ax.annotate(tag, (x, v), fontsize=7, xytext=(3, 3), textcoords="offset points")
        _value_axis(ax, "x", [x for x, _, _ in pts], log)
        ax.margins(x=0.1)  # room for the labels of the outermost points
        ax.set(xlabel=label, ylabel=f"best {data.metric}", title=f"{data.metric} vs {label}")
    return fig


def trial_cost(trial: TrialRecord, key: str) -> float | None:
    raw = trial.params.get(key) if key == "num_parameters" else trial.metrics.get(key)
    try:
        return None if raw is None else float(raw)
    except ValueError:
        return None


def objective_value(trial: TrialRecord, metric: str) -> float | None:
    """A trial's value of one objective: a validation metric's best (the kept weights), or a
    limited one as measured before training (``num_parameters``, ``inference_ms``)."""
    if metric in LIMITED:
        return trial_cost(trial, metric)
    value = trial.metrics.get(best_key(metric))
    return None if value is None or math.isnan(value) else float(value)


def _objective_points(data: ReportData) -> dict[str, tuple[TrialRecord, tuple[float, ...]]]:
    """Finished trials with every objective's value (the signed point, larger better)."""
    pairs = data.spec.settings.objective_pairs
    out = {}
    for t in data.record.trials:
        values = [objective_value(t, m) for m, _ in pairs]
        if t.outcome == Outcome.FINISHED and all(v is not None for v in values):
            point = tuple(
                float(v or 0.0) * sign(mode) for v, (_, mode) in zip(values, pairs, strict=True)
            )
            out[t.run_id] = (t, point)
    return out


def front_trials(data: ReportData) -> list[TrialRecord]:
    """The finished trials (not the seed baseline) no other dominates: ``pareto.json``'s."""
    points = {k: p for k, (t, p) in _objective_points(data).items() if not t.baseline}
    first = set(fronts(points)[0]) if points else set()
    return [t for t in data.record.trials if t.run_id in first]


def _front_style(t: TrialRecord, on_front: bool) -> tuple[str, str, int, str] | None:
    """(colour, marker, size, label) of a trial in the front's figure; None: not drawn."""
    if t.baseline:
        return BASELINE_COLOR, "*", 140, "seed baseline"
    if t.outcome == Outcome.INFEASIBLE:
        return "tab:gray", "x", 40, "over a limit (untrained)"
    if t.outcome != Outcome.FINISHED:
        return None
    if t.default:
        return "tab:purple", "s", 60, "planned default"
    return ("tab:red", "o", 45, "front") if on_front else ("tab:blue", "o", 45, "finished")


def fig_front(data: ReportData) -> Figure:
    """The first two objectives of a multi-objective search: every finished trial, the front
    joined, the seed baseline (star) and the planned default (square) for reference, and
    the trials over a limit (grey crosses: their untrained models)."""
    (mx, _), (my, _) = data.spec.settings.objective_pairs[:2]
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.subplots()
    front = {t.run_id for t in front_trials(data)}
    line, drawn = [], []
    for t in data.record.trials:
        x, y = objective_value(t, mx), objective_value(t, my)
        style = _front_style(t, t.run_id in front)
        if x is None or y is None or style is None:
            continue
        drawn.append((x, y))
        color, marker, size, label = style
        ax.scatter([x], [y], c=color, marker=marker, s=size, label=label)
        tag = t.name.split(" ")[0]
        ax.annotate(tag, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if t.run_id in front:
            line.append((x, y))
    if len(line) > 1:
        line.sort()
        ax.plot([p[0] for p in line], [p[1] for p in line], c="tab:red", lw=1, ls="--")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    if unique:
        ax.legend(list(unique.values()), list(unique.keys()), fontsize=8)
    for which, metric, values in (
        ("x", mx, [p[0] for p in drawn]),
        ("y", my, [p[1] for p in drawn]),
    ):
        if metric in LIMITED:  # counts and milliseconds; a validation metric keeps its axis
            _value_axis(ax, which, values, log=metric == "num_parameters")
    ax.set(xlabel=mx, ylabel=my, title=f"Pareto front: {my} against {mx}")
    return fig
