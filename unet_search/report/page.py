"""The search report: why the winner won, as one self-contained HTML page plus its PNGs
(figures: :mod:`unet_search.report.figures`).

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
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from matplotlib.figure import Figure

from unet_search.core.metrics import METRICS
from unet_search.core.names import REPORT_DIR
from unet_search.core.outcome import Outcome
from unet_search.core.tags import (
    TAG_ALIAS,
    TAG_BEST_RUN,
    TAG_CODE_VERSION,
    TAG_DECISION,
    TAG_FINAL_SOURCE,
    TAG_FINGERPRINT,
    TAG_REGISTERED,
)
from unet_search.report.data import ReportData, load_report_data
from unet_search.report.figures import (
    OUTCOME_STYLE,
    fig_best_so_far,
    fig_cost,
    fig_front,
    fig_importance,
    fig_parallel,
    front_trials,
    objective_value,
    param_importances,
    trial_cost,
)
from unet_search.tracking.client import download_artifacts, log_artifacts
from unet_search.tracking.read import held_out_text
from unet_search.tracking.registry import Champion, champion

__all__ = ["build_report", "write_report"]


def _png(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


def _download(uri: str, run_id: str, artifact: str, dst: Path, name: str) -> Path | None:
    """A run's PNG artifact copied to ``dst/name``; None if the run has none."""
    if not run_id:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            got = download_artifacts(uri, run_id, artifact, Path(tmp))
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


def _summary_rows(data: ReportData, champ: Champion | None) -> list[tuple[str, str]]:
    rec, tags = data.record, data.record.tags
    trials = rec.trials
    counts = {o: sum(t.outcome == o for t in trials) for o in OUTCOME_STYLE}
    scored = [
        (t, v)
        for t in trials
        if t.outcome == Outcome.FINISHED and (v := data.value(t)) is not None
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
        ("data fingerprint", tags.get(TAG_FINGERPRINT, "")),
        ("code version", tags.get(TAG_CODE_VERSION, "")),
        (
            "trials",
            f'<span id="num-trials">{len(trials)}</span>: '
            + ", ".join(f"{n} {o.replace('_', ' ')}" for o, n in counts.items() if n),
        ),
        ("metric", f"{data.metric} ({METRICS[data.metric].mode})"),
    ]
    if best:
        rows.append(("best trial", f"{html.escape(best[0].name)}: {_fmt(best[1])}"))
    rows += _compute_rows(data)
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
    if tags.get(TAG_REGISTERED):
        rows.append(
            (
                "registered",
                f"{html.escape(data.model_name)} v{tags[TAG_REGISTERED]} "
                f"@{tags.get(TAG_ALIAS, '')}"
                f" &mdash; {html.escape(tags.get(TAG_DECISION, ''))}",
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


def _compute_rows(data: ReportData) -> list[tuple[str, str]]:
    """The planned default's result, and the final fit: what it trained on from where, for
    how many of the search's epochs (``search.compute``)."""
    rows = []
    default = next((t for t in data.record.trials if t.default), None)
    if default is not None:
        rows.append(
            ("planned default", f"{html.escape(default.name)}: {_fmt(data.value(default))}")
        )
    final = next((t for t in data.record.trials if t.final), None)
    if final is not None:
        start = final.params.get("init_weights", "scratch")
        start = "from scratch" if start == "scratch" else "from its source's kept weights"
        metrics = data.record.metrics
        spent = ""
        if "explore_epochs" in metrics:
            spent = (
                f"; the exploring trials spent {metrics['explore_epochs']:.0f} epochs, the "
                f"final fit {metrics.get('final_fit_epochs', 0):.0f}"
            )
        rows.append(
            (
                "final fit",
                f'<span id="final-fit">{html.escape(final.name)}: {_fmt(data.value(final))}, '
                f"{final.params.get('epochs', '?')} epochs {start}{spent}</span>",
            )
        )
    chosen = data.record.tags.get(TAG_FINAL_SOURCE)
    if chosen:  # the incumbent rule's verdict (unet_search.search.incumbent)
        rows.append(("its source", f'<span id="final-source">{html.escape(chosen)}</span>'))
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
        params = trial_cost(t, "num_parameters")
        body.append(
            f"<tr><td>{i}</td><td>{html.escape(t.name)}</td><td>{t.outcome.replace('_', ' ')}"
            f"</td><td>{_fmt(data.value(t))}</td><td>{int(t.metrics.get('epoch', 0))}</td>"
            f"<td>{'&ndash;' if params is None else f'{int(params):,}'}</td>"
            f"<td>{_fmt(trial_cost(t, 'inference_ms_per_image'), 2)}</td></tr>"
        )
    return f'<table class="trials">{head}{"".join(body)}</table>'


def _front_table(data: ReportData) -> str:
    """A multi-objective search's front (the trials of pareto.json), each objective's value;
    the seed baseline and the planned default below it for reference."""
    pairs = data.spec.settings.objective_pairs
    head = "<tr><th>trial</th>" + "".join(
        f"<th>{html.escape(m)} ({mode})</th>" for m, mode in pairs
    )
    rows = [(t, "") for t in front_trials(data)]
    rows += [(t, " (seed baseline)") for t in data.record.trials if t.baseline]
    rows += [(t, " (planned default)") for t in data.record.trials if t.default]
    body = []
    for t, note in rows:
        cells = []
        for m, _ in pairs:
            value = objective_value(t, m)
            digits = 0 if m == "num_parameters" else 2 if m == "inference_ms" else 4
            cells.append(f"<td>{_fmt(value, digits)}</td>")
        body.append(f"<tr><td>{html.escape(t.name)}{note}</td>{''.join(cells)}</tr>")
    return f'<table class="front">{head}</tr>{"".join(body)}</table>'


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
    data: ReportData, out: Path, champ: Champion | None
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
    if data.spec.settings.multi_objective:
        items.append(
            (
                "front",
                "Pareto front",
                _png(fig_front(data), out / "pareto_front.png"),
                "Finished trials on the first two objectives; red: no other trial is better in "
                "every objective (pareto.json of the search's run). Grey crosses: over a limit "
                "(search.constraints), untrained.",
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
    champ = champion(data.uri, data.model_name)
    figures = _figures(data, out, champ)
    summary = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in _summary_rows(data, champ))
    front = ""
    if data.spec.settings.multi_objective:
        front = f"<h2>Pareto front</h2>{_front_table(data)}"
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
        f"<table>{summary}</table><h2>Top trials</h2>{_top_table(data)}{front}"
        f"{''.join(sections)}"
        f"<footer>Generated {_when(int(datetime.now(UTC).timestamp() * 1000))}. "
        f'<span id="image-check"></span></footer>{_CHECK_SCRIPT}</body></html>'
    )
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def write_report(uri: str, search_id: str, out: Path, log: bool = False) -> Path:
    """Build the report of ``search_id`` into ``out``; with ``log`` also upload it to the
    search's parent run (artifact folder ``report/``). Returns the HTML path."""
    data = load_report_data(uri, search_id)
    path = build_report(data, out)
    if log:
        log_artifacts(uri, data.record.parent_run_id, out, REPORT_DIR)
    return path
