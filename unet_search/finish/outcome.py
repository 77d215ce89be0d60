"""The end of a search, once its trials and the final fit have run: the best model scored
once on the held-out test split through ``predict``, the trials' summary logged on the parent
run, the model registered behind the champion gate (with the Otsu rule)."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import optuna
import torch

from unet_search.core.errors import UserError
from unet_search.core.metrics import best_key
from unet_search.core.names import BEST_MODEL_DIR, ONNX_DIR, PARETO_FILE, SUMMARY_FILE
from unet_search.core.outcome import RunStatus
from unet_search.core.tags import (
    TAG_BEST_RUN,
    TAG_BEST_TRIAL,
    TAG_CODE_VERSION,
    TAG_CONSTRAINTS,
    TAG_DATA,
    TAG_FINGERPRINT,
    TAG_INFERENCE_MS,
    TAG_LATENCY,
    TAG_OBJECTIVES,
    TAG_ONNX,
    TAG_ONNX_DIFF,
    TAG_ONNX_ERROR,
    TAG_ONNX_INFERENCE_MS,
    TAG_RUN_ID,
    TAG_SEARCH_ID,
    TAG_SPLIT,
    TAG_TRIAL_ID,
)
from unet_search.data.dataset import DatasetArrays
from unet_search.data.split import split_indices
from unet_search.search.context import SearchContext
from unet_search.search.final import FinalPlan
from unet_search.search.outcome import TrialSummary, front_of
from unet_search.serve.export import log_and_register
from unet_search.serve.inference import Predictor, find_model_dir, score_images
from unet_search.serve.onnx import export_onnx
from unet_search.space.settings import SearchSettings
from unet_search.tracking.client import download_artifacts, log_artifacts, log_metrics, set_tags
from unet_search.tracking.registry import Registration
from unet_search.train.latency import latency_image, median_ms

__all__ = [
    "download_best_model",
    "latency_tags",
    "log_summary",
    "onnx_export",
    "pareto",
    "pareto_trials",
    "otsu_veto",
    "register_best",
    "SearchOutcome",
    "test_scores",
]


@dataclass(frozen=True)
class SearchOutcome:
    search_id: str
    experiment_id: str
    parent_run_id: str
    metric: str
    trials: tuple[TrialSummary, ...]
    best: TrialSummary | None
    baseline: TrialSummary | None
    registration: Registration | None
    study: optuna.Study
    otsu_val_dice: float | None  # a plain Otsu threshold's Dice on the validation images
    # The best model's scores on the held-out test images (test_dice, ..., otsu_test_dice);
    # empty without a test split
    test: dict[str, float]
    report: Path | None  # the HTML report, when it could be written
    log: Path  # the progress lines plus Ray's and Tune's log (also a parent-run artifact)
    # The final fit (search.compute): what it trained from and for, and its run (None: none
    # ran, or it failed: `best` is then the best exploring trial)
    final_plan: FinalPlan | None = None
    final: TrialSummary | None = None
    front: tuple[TrialSummary, ...] = ()  # several objectives: the finished trials' front


def otsu_veto(ctx: SearchContext, best: TrialSummary) -> str | None:
    """Why ``best`` must not be champion: on a binary ``val_dice`` search, a validation Dice
    below a plain Otsu threshold's on the same images (``search.champion_must_beat_otsu``)."""
    settings, otsu = ctx.spec.settings, ctx.otsu_val_dice
    if not settings.champion_must_beat_otsu or settings.metric != "val_dice":
        return None
    if otsu is None or best.value is None or best.value >= otsu:
        return None
    return (
        f"its val_dice {best.value:.4f} is below a plain Otsu threshold's {otsu:.4f} on the "
        "same validation images, so it is not champion (search.champion_must_beat_otsu)"
    )


def log_summary(
    ctx: SearchContext,
    trials: list[TrialSummary],
    best: TrialSummary | None,
    baseline: TrialSummary | None,
    test: dict[str, float],
    extra: dict[str, float] | None = None,
) -> None:
    """The trials' summary (``summary.json``, ``summary.csv``) and the search's metrics on
    its parent run; ``extra``: more metrics (the compute spent by exploring and final fit)."""
    metric = ctx.spec.settings.metric
    with tempfile.TemporaryDirectory() as tmp:
        rows = [asdict(t) for t in trials]
        (Path(tmp) / SUMMARY_FILE).write_text(json.dumps(rows, indent=2, default=str))
        header = "trial,name,status,best_" + metric + ",epochs,baseline,params\n"
        lines = [
            f"{t.index},{t.name},{t.status},{'' if t.value is None else f'{t.value:.6f}'},"
            f'{t.epochs},{t.baseline},"{json.dumps(t.params)}"'
            for t in trials
        ]
        (Path(tmp) / "summary.csv").write_text(header + "\n".join(lines) + "\n")
        if ctx.spec.settings.multi_objective:
            front = pareto(trials, ctx.spec.settings)
            (Path(tmp) / PARETO_FILE).write_text(json.dumps(front, indent=2))
        log_artifacts(ctx.tracking_uri, ctx.parent_run_id, Path(tmp))
    metrics: dict[str, float] = {"num_trials": float(len(trials)), **test, **(extra or {})}
    if ctx.otsu_val_dice is not None:  # a plain threshold on the same images
        metrics["otsu_val_dice"] = ctx.otsu_val_dice
    for status in (RunStatus.FINISHED, RunStatus.KILLED, RunStatus.FAILED):
        metrics[f"trials_{status.lower()}"] = float(sum(t.status == status for t in trials))
    if ctx.spec.settings.constraints:  # of the killed: over a limit before training
        metrics["trials_infeasible"] = float(sum(t.infeasible for t in trials))
    if best and best.value is not None:
        metrics[best_key(metric)] = best.value
    if baseline and baseline.value is not None:
        metrics[f"baseline_{metric}"] = baseline.value
        if best and best.value is not None:
            metrics[f"gain_over_baseline_{metric}"] = best.value - baseline.value
    log_metrics(ctx.tracking_uri, ctx.parent_run_id, metrics, step=0)
    if best:
        set_tags(
            ctx.tracking_uri,
            ctx.parent_run_id,
            {
                TAG_BEST_TRIAL: best.trial_id,
                TAG_BEST_RUN: best.run_id or "",
            },
        )


def pareto_trials(trials: list[TrialSummary], settings: SearchSettings) -> list[TrialSummary]:
    """A multi-objective search's front: the non-dominated trials among those that finished
    (within the limits: an infeasible trial trained nothing; the seed baseline, a reference,
    apart); empty for a search of one objective."""
    if not settings.multi_objective:
        return []
    finished = [
        t for t in trials if t.status == RunStatus.FINISHED and not t.baseline and not t.infeasible
    ]
    return front_of(finished, settings)


def pareto(trials: list[TrialSummary], settings: SearchSettings) -> list[dict[str, object]]:
    """``pareto.json``: :func:`pareto_trials`, each ``{"trial_id", "run_id", "values":
    {objective: value}}``."""
    return [
        {"trial_id": t.trial_id, "run_id": t.run_id, "values": dict(t.values)}
        for t in pareto_trials(trials, settings)
    ]


def download_best_model(ctx: SearchContext, best: TrialSummary, tmp: Path) -> Path:
    """The best trial's kept model (its ``best_model`` artifact), downloaded under ``tmp``."""
    assert best.run_id is not None
    return download_artifacts(ctx.tracking_uri, best.run_id, BEST_MODEL_DIR, tmp)


def test_scores(ctx: SearchContext, model: Path, arrays: DatasetArrays) -> dict[str, float]:
    """The kept model's scores on the held-out test images, segmented as ``unet-search
    predict`` does (whole images at their original sizes), and Otsu's on the same images;
    empty without a test split. Nothing in the search saw these images: this is the number
    the registered version carries."""
    test = split_indices(len(arrays), ctx.spec.base_config().data).test
    if not len(test):
        return {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    predictor = Predictor.from_dir(find_model_dir(model), device)
    scores = score_images(predictor, arrays, [int(i) for i in test], "test_")
    return {**scores, "test_images": float(len(test))}


def onnx_export(
    ctx: SearchContext, model: Path, arrays: DatasetArrays, tmp: Path
) -> tuple[Path | None, dict[str, str]]:
    """The kept model's ONNX export (``search.onnx``), checked against PyTorch on its first
    validation image predicted whole, and the version's tags that say how it went. A model
    that cannot be exported is still registered (the pyfunc), the reason tagged and said."""
    if not ctx.spec.settings.onnx:
        return None, {TAG_ONNX: "off"}
    val = split_indices(len(arrays), ctx.spec.base_config().data).val
    out = tmp / ONNX_DIR
    try:
        what = f"search {ctx.search_id}'s model"
        diff = export_onnx(find_model_dir(model), out, arrays.image(int(val[0])), what)
    except UserError as err:
        print(f"{err} It is registered without ONNX.", flush=True)
        return None, {TAG_ONNX: "failed", TAG_ONNX_ERROR: str(err)[:4000]}
    return out, {TAG_ONNX: "true", TAG_ONNX_DIFF: repr(diff)}


def latency_tags(ctx: SearchContext, model: Path, onnx_dir: Path | None) -> dict[str, str]:
    """``inference_ms`` of the model to register, PyTorch's and (with its export)
    onnxruntime's, measured one way (:mod:`unet_search.train.latency`) on this process's
    device and threads, and what they were measured on."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    image = latency_image(ctx.spec.settings.latency_image)
    h, w = image.shape[:2]
    tags = {TAG_LATENCY: f"{h}x{w} {device} {torch.get_num_threads()} threads"}
    runtimes: list[tuple[str, str, Path | None]] = [(TAG_INFERENCE_MS, "torch", None)]
    if onnx_dir is not None:
        runtimes.append((TAG_ONNX_INFERENCE_MS, "onnx", onnx_dir))
    for tag, runtime, folder in runtimes:
        predictor = Predictor.from_dir(find_model_dir(model), device, None, runtime, folder)
        tags[tag] = repr(median_ms(partial(predictor.predict_logits, [image]), device))
    return tags


def _choice_tags(settings: SearchSettings) -> dict[str, str]:
    """How the version was chosen beyond its metric: several objectives, limits."""
    tags = {}
    if settings.multi_objective:
        tags[TAG_OBJECTIVES] = ",".join(f"{m}:{mode}" for m, mode in settings.objective_pairs)
    if settings.constraints:
        tags[TAG_CONSTRAINTS] = ",".join(f"{c.metric}<={c.max:g}" for c in settings.constraints)
    return tags


def register_best(
    ctx: SearchContext,
    best: TrialSummary,
    model_name: str,
    model: Path,
    test: dict[str, float],
    arrays: DatasetArrays,
) -> Registration:
    """Register the kept ``model`` (with its ONNX export) behind the champion gate."""
    assert best.run_id is not None and best.value is not None
    with tempfile.TemporaryDirectory(prefix="unet-search-onnx-") as tmp:
        onnx_dir, onnx_tags = onnx_export(ctx, model, arrays, Path(tmp))
        onnx_tags |= latency_tags(ctx, model, onnx_dir)
        return log_and_register(
            ctx.tracking_uri,
            ctx.parent_run_id,
            model,
            model_name,
            ctx.spec.settings.metric,
            best.value,
            ctx.spec.settings.mode,
            tags={
                TAG_FINGERPRINT: ctx.fingerprint,
                TAG_DATA: ctx.data_id,
                TAG_SPLIT: ctx.split,
                TAG_SEARCH_ID: ctx.search_id,
                TAG_TRIAL_ID: best.trial_id,
                TAG_RUN_ID: best.run_id,
                TAG_CODE_VERSION: ctx.code_version,
                **_choice_tags(ctx.spec.settings),
                **onnx_tags,
            },
            test=test,
            veto=otsu_veto(ctx, best),
            onnx_dir=onnx_dir,
        )
