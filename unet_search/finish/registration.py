"""The best model registered: exported to ONNX and checked against PyTorch, packaged for
BioImage.IO (tested as `bioimageio test` tests it), its latency measured (PyTorch's and
onnxruntime's), tagged with the data, split, search and how it was
chosen, and handed to the champion gate (with the Otsu rule). The pyfunc it is registered as
is :mod:`unet_search.serve.packaging`'s; the gate, :mod:`unet_search.tracking.registry`'s."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unet_search.core.errors import UserError
from unet_search.core.names import BIOIMAGEIO_DIR, ONNX_DIR
from unet_search.core.tags import (
    TAG_BIOIMAGEIO,
    TAG_BIOIMAGEIO_ERROR,
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
from unet_search.search.summaries import TrialSummary
from unet_search.serve.bioimageio import write_package
from unet_search.serve.bioimageio_files import PackageInfo
from unet_search.serve.inference import Predictor, find_model_dir
from unet_search.serve.onnx import export_onnx
from unet_search.serve.packaging import Candidate, log_and_register
from unet_search.space.settings import SearchSettings
from unet_search.tracking.registry import Registration
from unet_search.train.latency import latency_image, median_ms

__all__ = [
    "bioimageio_package",
    "first_val_image",
    "latency_tags",
    "onnx_export",
    "otsu_veto",
    "register_best",
]


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


def first_val_image(ctx: SearchContext, arrays: DatasetArrays) -> np.ndarray:
    """The search's first validation image: what the exports are checked and cut from."""
    val = split_indices(len(arrays), ctx.spec.base_config().data).val
    return arrays.image(int(val[0]))


def onnx_export(
    ctx: SearchContext, model: Path, image: np.ndarray, tmp: Path
) -> tuple[Path | None, dict[str, str]]:
    """The kept model's ONNX export (``search.onnx``), checked against PyTorch on ``image``
    (its first validation image) predicted whole, and the version's tags that say how it
    went. A model that cannot be exported is still registered (the pyfunc), the reason tagged
    and said."""
    if not ctx.spec.settings.onnx:
        return None, {TAG_ONNX: "off"}
    out = tmp / ONNX_DIR
    try:
        what = f"search {ctx.search_id}'s model"
        diff = export_onnx(find_model_dir(model), out, image, what)
    except UserError as err:
        print(f"{err} It is registered without ONNX.", flush=True)
        return None, {TAG_ONNX: "failed", TAG_ONNX_ERROR: str(err)[:4000]}
    return out, {TAG_ONNX: "true", TAG_ONNX_DIFF: repr(diff)}


def bioimageio_package(
    ctx: SearchContext,
    model: Path,
    image: np.ndarray,
    out: Path,
    provenance: Mapping[str, Any],
) -> tuple[Path | None, dict[str, str]]:
    """The kept model's BioImage.IO package (with its ONNX export), its test tensors cut from
    ``image`` (its first validation image), the search's ``provenance`` in it, under the documented
    default license (``unet-search export --format bioimageio --license`` writes another);
    the version's tags that say how it went. A model that cannot be packaged is still
    registered, the reason tagged and said."""
    name = str(provenance["model_name"])
    info = PackageInfo(name, provenance=provenance, description=_description(provenance))
    try:
        what = f"search {ctx.search_id}'s model"
        write_package(find_model_dir(model), out, image, info, what)
    except UserError as err:
        print(f"{err} It is registered without a BioImage.IO package.", flush=True)
        return None, {TAG_BIOIMAGEIO: "failed", TAG_BIOIMAGEIO_ERROR: str(err)[:4000]}
    return out, {TAG_BIOIMAGEIO: "true"}


def _description(provenance: Mapping[str, Any]) -> str:
    """The package's one-paragraph description: the search, the data and the scores."""
    held_out = ", ".join(f"{k} {v:.4f}" for k, v in dict(provenance["test"]).items())
    return (
        f"A UNet chosen by unet-search's search {provenance['search_id']} on data "
        f"{provenance['data']} ({provenance['metric']} {provenance['value']:.4f} on its "
        "validation split" + (f"; held-out test: {held_out}" if held_out else "") + ")."
    )


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
        image = first_val_image(ctx, arrays)
        onnx_dir, onnx_tags = onnx_export(ctx, model, image, Path(tmp))
        package_dir, package_tags = None, {TAG_BIOIMAGEIO: "off"}
        if onnx_dir is not None:
            provenance: dict[str, Any] = {
                "model_name": model_name,
                "search_id": ctx.search_id,
                "trial_id": best.trial_id,
                "run_id": best.run_id,
                "data": ctx.data_id,
                "data_fingerprint": ctx.fingerprint,
                "split": ctx.split,
                "metric": ctx.spec.settings.metric,
                "value": best.value,
                "test": dict(test),
                "code_version": ctx.code_version,
            }
            out = Path(tmp) / BIOIMAGEIO_DIR
            package_dir, package_tags = bioimageio_package(ctx, model, image, out, provenance)
        onnx_tags |= package_tags | latency_tags(ctx, model, onnx_dir)
        candidate = Candidate(
            model,
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
            bioimageio_dir=package_dir,
        )
        return log_and_register(ctx.tracking_uri, ctx.parent_run_id, model_name, candidate)
