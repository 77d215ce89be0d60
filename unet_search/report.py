"""The search report: why the winner won, as one self-contained HTML page plus its PNGs.

Everything is read back from MLflow (the parent run, every trial run and its per-epoch
history, the registry), so ``unet-search report NAME`` draws the same page at any time after
a search, from any machine that reaches the tracking server. Figures:

- best-so-far of the search metric against trial number and against total training epochs,
  the seed baseline marked;
- parallel coordinates of the sampled parameters against the metric;
- parameter importance (Optuna's fANOVA on the completed, non-baseline trials);
- the metric against parameter count and against measured inference time per image;
- prediction overlays of the search's best trial and of the current champion.
"""

from __future__ import annotations

import base64
import html
import math
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from unet_search import registry, tracking
from unet_search.config import METRICS
from unet_search.spaces import ParamSpec, SearchSpec, load_space_text
from unet_search.tags import TAG_BEST_RUN
from unet_search.tracking import SearchRecord, TrialRecord, held_out_text

__all__ = [
    "REPORT_ARTIFACT_DIR",
    "ReportData",
    "build_report",
    "load_report_data",
    "param_importances",
    "write_report",
]

REPORT_ARTIFACT_DIR = "report"
OUTCOME_STYLE = {
    "finished": ("tab:blue", "o"),
    "stopped_early": ("tab:orange", "v"),
    "failed": ("tab:red", "x"),
    "running": ("tab:gray", "."),
}
BASELINE_COLOR = "tab:green"


@dataclass(frozen=True)
class ReportData:
    """What the report needs: the search as MLflow holds it and its validated space."""

    uri: str
    record: SearchRecord
    spec: SearchSpec
    model_name: str

    @property
    def metric(self) -> str:
        return self.spec.settings.metric

    @property
    def sign(self) -> float:
        return 1.0 if METRICS[self.metric].maximize else -1.0

    def value(self, trial: TrialRecord) -> float | None:
        """A trial's best value of the search metric (the weights it kept)."""
        value = trial.metrics.get(f"best_{self.metric}")
        return None if value is None or math.isnan(value) else float(value)

    def better(self, a: float, b: float) -> bool:
        return self.sign * a > self.sign * b


# --- figures -----------------------------------------------------------------------------


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
        done = t.outcome == "finished"
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
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=f"best {data.metric}")
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
        if t.baseline or t.outcome != "finished" or value is None:
            continue
        chosen = sampled_params(data.spec, t)
        study.add_trial(
            optuna.trial.create_trial(
                params=chosen, distributions={k: dists[k] for k in chosen}, value=value
            )
        )
    if len(study.trials) < 2:
        return f"needs at least 2 completed trials; this search has {len(study.trials)}."
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
        if t.outcome == "finished" and (v := data.value(t)) is not None
    ]
    for ax, (key, label, log) in zip(
        axes,
        [
            ("num_parameters", "trainable parameters", True),
            ("inference_ms_per_image", "inference ms per image (trial's own worker)", False),
        ],
        strict=True,
    ):
        pts = [(x, v, t) for t, v in rows if (x := _cost(t, key)) is not None]
        for x, v, t in pts:
            color, marker = (BASELINE_COLOR, "*") if t.baseline else ("tab:blue", "o")
            ax.scatter([x], [v], c=color, marker=marker, s=120 if t.baseline else 40)
            tag = t.name.split(" ")[0]
            ax.annotate(tag, (x, v), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if log and pts:
            ax.set_xscale("log")
        ax.set(xlabel=label, ylabel=f"best {data.metric}", title=f"{data.metric} vs {label}")
    return fig


def _cost(trial: TrialRecord, key: str) -> float | None:
    raw = trial.params.get(key) if key == "num_parameters" else trial.metrics.get(key)
    try:
        return None if raw is None else float(raw)
    except ValueError:
        return None


# --- page --------------------------------------------------------------------------------


def _png(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


def _download(uri: str, run_id: str, artifact: str, dst: Path, name: str) -> Path | None:
    """A run's PNG artifact copied to ``dst/name``; None if the run has none."""
    if not run_id:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            got = tracking.download_artifacts(uri, run_id, artifact, Path(tmp))
        except Exception:  # no such artifact (e.g. a model logged before samples existed)
            return None
        target = dst / name
        target.write_bytes(got.read_bytes())
        return target


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _fmt(value: float | None, digits: int = 4) -> str:
    return "&ndash;" if value is None else f"{value:.{digits}f}"


def _when(ms: int | None) -> str:
    if not ms:
        return "&ndash;"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _summary_rows(data: ReportData, champ: registry.Champion | None) -> list[tuple[str, str]]:
    rec, tags = data.record, data.record.tags
    trials = rec.trials
    counts = {o: sum(t.outcome == o for t in trials) for o in OUTCOME_STYLE}
    scored = [
        (t, v) for t in trials if t.outcome == "finished" and (v := data.value(t)) is not None
    ]
    best = max(scored, key=lambda tv: data.sign * tv[1], default=None)
    base = next(((t, data.value(t)) for t in trials if t.baseline), None)
    duration = (rec.end_ms - rec.start_ms) / 1000 if rec.end_ms else None
    rows = [
        ("search", rec.search_id),
        ("space", f"{data.spec.name} &mdash; {html.escape(data.spec.description)}"),
        ("status", rec.status),
        ("started", _when(rec.start_ms)),
        ("duration", "&ndash;" if duration is None else f"{duration / 60:.1f} min"),
        ("data", html.escape(rec.params.get("data_dir", ""))),
        ("data fingerprint", tags.get(tracking.TAG_FINGERPRINT, "")),
        ("code version", tags.get(tracking.TAG_CODE_VERSION, "")),
        (
            "trials",
            f'<span id="num-trials">{len(trials)}</span>: '
            + ", ".join(f"{n} {o.replace('_', ' ')}" for o, n in counts.items() if n),
        ),
        ("metric", f"{data.metric} ({METRICS[data.metric].mode})"),
    ]
    if best:
        rows.append(("best trial", f"{html.escape(best[0].name)}: {_fmt(best[1])}"))
    if base:
        gain = ""
        if best and base[1] is not None:
            gain = f" (best &minus; baseline = {best[1] - base[1]:+.4f})"
        rows.append(("seed baseline", f"{html.escape(base[0].name)}: {_fmt(base[1])}{gain}"))
    otsu = rec.metrics.get("otsu_val_dice")
    if otsu is not None:
        rows.append(("Otsu threshold", f"val_dice {_fmt(otsu)} on the same validation images"))
    held_out = held_out_text(rec.metrics)
    if held_out is not None:
        rows.append(
            (
                "held-out test",
                f'<span id="held-out">{html.escape(held_out)}</span>: the best trial\'s kept '
                "model on images no trial, scheduler or searcher saw",
            )
        )
    if tags.get(tracking.TAG_REGISTERED):
        rows.append(
            (
                "registered",
                f"{html.escape(data.model_name)} v{tags[tracking.TAG_REGISTERED]} "
                f"@{tags.get(tracking.TAG_ALIAS, '')}"
                f" &mdash; {html.escape(tags.get(tracking.TAG_DECISION, ''))}",
            )
        )
    if champ:
        rows.append(
            (
                "champion now",
                f"{html.escape(champ.name)} v{champ.version}: {champ.metric} {_fmt(champ.value)}"
                f" (search {html.escape(champ.search_id)})",
            )
        )
    return rows


def _top_table(data: ReportData, k: int = 10) -> str:
    ranked = sorted(
        (t for t in data.record.trials if data.value(t) is not None),
        key=lambda t: -data.sign * (data.value(t) or 0.0),
    )
    head = (
        "<tr><th>#</th><th>trial</th><th>outcome</th>"
        f"<th>best {data.metric}</th><th>epochs</th><th>parameters</th><th>ms / image</th></tr>"
    )
    body = []
    for i, t in enumerate(ranked[:k], 1):
        params = _cost(t, "num_parameters")
        body.append(
            f"<tr><td>{i}</td><td>{html.escape(t.name)}</td><td>{t.outcome.replace('_', ' ')}"
            f"</td><td>{_fmt(data.value(t))}</td><td>{int(t.metrics.get('epoch', 0))}</td>"
            f"<td>{'&ndash;' if params is None else f'{int(params):,}'}</td>"
            f"<td>{_fmt(_cost(t, 'inference_ms_per_image'), 2)}</td></tr>"
        )
    return f'<table class="trials">{head}{"".join(body)}</table>'


# Written by the page itself once loaded: a headless browser (or a person) sees at once
# whether every embedded figure decoded.
_CHECK_SCRIPT = """<script>
window.addEventListener("load", function () {
  var imgs = Array.from(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  document.body.dataset.images = String(imgs.length);
  document.body.dataset.brokenImages = String(broken.length);
  document.getElementById("image-check").textContent =
    imgs.length + " figures, " + broken.length + " failed to load";
});
</script>"""

_STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1320px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; font-size: 0.92em; }
th { background: #f4f4f4; } img { max-width: 100%; border: 1px solid #eee; }
.note { color: #666; font-size: 0.9em; } footer { margin-top: 2em; color: #888; }
</style>"""


def _figures(
    data: ReportData, out: Path, champ: registry.Champion | None
) -> list[tuple[str, str, Path | None, str]]:
    """(section id, title, PNG or None, note) for every figure, PNGs written to ``out``."""
    uri = data.uri
    items: list[tuple[str, str, Path | None, str]] = [
        (
            "best-so-far",
            "Best so far",
            _png(fig_best_so_far(data), out / "best_so_far.png"),
            "Star and dashed line: the seed baseline (a trial that samples nothing).",
        ),
        (
            "parallel",
            "Parameters against the metric",
            _png(fig_parallel(data), out / "parallel_coordinates.png"),
            "Each line is a trial (the baseline samples nothing and is left out); a line "
            "without a dot on an axis did not sample that parameter (a condition ruled it out).",
        ),
    ]
    importances = param_importances(data)
    if isinstance(importances, dict) and importances:
        png: Path | None = _png(fig_importance(importances), out / "importance.png")
        note = "Optuna fANOVA over the completed trials, parameters sampled in all of them."
    else:
        png, note = None, importances if isinstance(importances, str) else "no parameter varied."
    items.append(("importance", "Parameter importance", png, note))
    items.append(
        (
            "cost",
            "Accuracy against size and speed",
            _png(fig_cost(data), out / "cost.png"),
            "Finished trials; inference is timed on each trial's own worker while other trials "
            "ran, so compare orders of magnitude.",
        )
    )
    best_id = data.record.tags.get(TAG_BEST_RUN, "")
    png = _download(uri, best_id, "samples/predictions.png", out, "best_trial.png")
    items.append(
        (
            "best-overlays",
            "The search's best trial: image | truth | prediction",
            png,
            "Fixed validation samples, the same in every trial.",
        )
    )
    if champ and champ.trial_run_id and champ.trial_run_id != best_id:
        png = _download(uri, champ.trial_run_id, "samples/predictions.png", out, "champion.png")
        title = f"The champion (v{champ.version}, from search {champ.search_id})"
        items.append(("champion-overlays", title, png, "The same validation samples."))
    return items


def build_report(data: ReportData, out: Path) -> Path:
    """Write ``out/index.html`` (figures embedded, opens without a server) and the PNGs next
    to it; returns the HTML path."""
    out.mkdir(parents=True, exist_ok=True)
    champ = registry.champion(data.uri, data.model_name)
    figures = _figures(data, out, champ)
    summary = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in _summary_rows(data, champ))
    sections = []
    for sid, title, png, note in figures:
        body = _img(png, title) if png else '<p class="note">not available</p>'
        sections.append(
            f'<section id="{sid}"><h2>{html.escape(title)}</h2>{body}'
            f'<p class="note">{html.escape(note)}</p></section>'
        )
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>unet-search report: {html.escape(data.record.search_id)}</title>{_STYLE}</head>"
        f"<body><h1>unet-search report: {html.escape(data.record.search_id)}</h1>"
        f"<table>{summary}</table><h2>Top trials</h2>{_top_table(data)}{''.join(sections)}"
        f"<footer>Generated {_when(int(datetime.now(UTC).timestamp() * 1000))}. "
        f'<span id="image-check"></span></footer>{_CHECK_SCRIPT}</body></html>'
    )
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def load_report_data(uri: str, search_id: str) -> ReportData:
    """The search ``search_id`` read back from MLflow (a UserError if there is none)."""
    state = tracking.read_search_state(uri, search_id)
    spec = load_space_text(state["space_source"], state["space_file"], state["overrides"])
    return ReportData(uri, tracking.search_record(uri, search_id), spec, state["model_name"])


def write_report(uri: str, search_id: str, out: Path, log: bool = False) -> Path:
    """Build the report of ``search_id`` into ``out``; with ``log`` also upload it to the
    search's parent run (artifact folder ``report/``). Returns the HTML path."""
    data = load_report_data(uri, search_id)
    path = build_report(data, out)
    if log:
        tracking.log_artifacts(uri, data.record.parent_run_id, out, REPORT_ARTIFACT_DIR)
    return path
