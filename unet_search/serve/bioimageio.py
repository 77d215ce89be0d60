"""A model as a BioImage.IO package (model description format 0.5): what deepImageJ (Fiji),
ilastik, QuPath and the BioImage.IO runtimes load. ``rdf.yaml`` with

- one input, ``image`` (batch, channel, y, x) in the training images' own type and channels,
  its preprocessing the model's normalization (the image over its type's full scale, or each
  image's percentiles, or its mean and std), any size of ``min + n * step`` pixels: ``step``
  is ``2**depth`` at the model's scale, ``min`` one tile;
- one output, ``probabilities`` (batch, channel, y, x) at the image's size: per class (a
  binary model's one foreground channel; the boundary target's background / interior /
  boundary; the distance target's levels), with the halo a tiling tool crops from each tile
  (half of ``predict``'s tile overlap);
- weights as ONNX (opset 18, dynamic batch, height and width) and as a PyTorch state dict of
  :class:`unet_search.serve.standalone.StandaloneNetwork` (the graph's source: this package,
  installed); the model's ``scale`` and flips are inside both
  (:mod:`unet_search.serve.standalone`);
- test tensors cut from a validation image (one tile), a cover (the image | its prediction),
  documentation (how to get instances: the watershed stays ``unet-search predict
  --output-kind instances``) and the search's provenance in ``config.unet_search``.

Before anything is written, the ONNX graph is checked against PyTorch on the test image and
the package is tested as ``bioimageio test`` tests it (bioimageio.core, both weight formats),
offline: the package's files are local and the tests run in this Python, so nothing is
fetched.
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from unet_search.core.errors import UserError
from unet_search.core.files import refuse_existing
from unet_search.core.names import BIOIMAGEIO_DIR, MODEL_FILE
from unet_search.data.stats import value_range
from unet_search.models.card import ModelCard
from unet_search.serve.bioimageio_files import (
    DEFAULT_LICENSE,
    EPS,
    INPUT_ID,
    OUTPUT_ID,
    AxisSizes,
    PackageInfo,
    axis_sizes,
    channel_names,
    class_names,
    cover,
    cut_test_input,
    default_author,
    documentation,
    environment,
    unit_values,
)
from unet_search.serve.onnx import TOLERANCE, export_graph
from unet_search.serve.standalone import NotOneGraph, StandaloneNetwork, input_channels
from unet_search.train.sliding import Preprocessing

__all__ = [
    "check_license",
    "export_package",
    "package_name",
    "PROVENANCE_KEY",
    "RDF_FILE",
    "standalone",
    "TEST_INPUT",
    "TEST_OUTPUT",
    "write_package",
]

RDF_FILE = "rdf.yaml"
TEST_INPUT, TEST_OUTPUT = "test_input.npy", "test_output.npy"
PROVENANCE_KEY = "unet_search"  # the description's config entry of the search's provenance
UNET_CITATION = ("Ronneberger, Fischer, Brox 2015: U-Net", "10.1007/978-3-319-24574-4_28")


def standalone(model_dir: Path, what: str) -> tuple[StandaloneNetwork, ModelCard]:
    """The saved model in ``model_dir`` as one graph with its weights (a UserError naming
    ``what`` for a model no graph of any size can be)."""
    card = ModelCard.read(model_dir)
    try:
        net = StandaloneNetwork(card.to_dict())
    except NotOneGraph as reason:
        raise UserError(f"{what}: cannot be a BioImage.IO package: {reason}.") from None
    net.load_state_dict(load_file(str(model_dir / MODEL_FILE)))
    return net.eval(), card


def _check_onnx(path: Path, unit: np.ndarray, expected: np.ndarray, what: str) -> float:
    """The largest |ONNX - PyTorch| probability on the test tensor; a UserError above
    :data:`TOLERANCE`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (got,) = session.run([OUTPUT_ID], {INPUT_ID: unit})
    diff = float(np.abs(got - expected).max())
    if not diff <= TOLERANCE:
        raise UserError(
            f"{what}: its ONNX graph predicts other probabilities than the model (largest "
            f"difference {diff:.3g}, allowed {TOLERANCE:.3g}): no package written."
        )
    return diff


def _spec() -> Any:
    """bioimageio.spec's model format 0.5, untyped here: pydantic checks every field when a
    description is built (its own annotations are narrower than what it accepts)."""
    from bioimageio.spec.model import v0_5

    return v0_5


def _preprocessing(card: ModelCard) -> list[Any]:
    spec = _spec()

    norm = Preprocessing.of_card(card).normalization
    steps: list[Any] = [spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32"))]
    per_channel = [spec.AxisId("y"), spec.AxisId("x")]
    if norm.name == "percentile":
        low, high = norm.percentiles
        kwargs = spec.ScaleRangeKwargs(
            axes=per_channel, min_percentile=low, max_percentile=high, eps=EPS
        )
        steps.append(spec.ScaleRangeDescr(kwargs=kwargs))
    elif norm.name == "zscore":
        kwargs = spec.ZeroMeanUnitVarianceKwargs(axes=per_channel, eps=EPS)
        steps.append(spec.ZeroMeanUnitVarianceDescr(kwargs=kwargs))
    else:
        full = value_range(np.dtype(str(card.preprocessing.get("image_dtype", "uint8"))))
        steps.append(spec.ScaleLinearDescr(kwargs=spec.ScaleLinearKwargs(gain=1.0 / full)))
    # The spec ends a preprocessing without a last ensure_dtype with the input's own type.
    return [*steps, steps[0]]


def _description(
    folder: Path,
    card: ModelCard,
    info: PackageInfo,
    sizes: AxisSizes,
    dtype: np.dtype,
) -> Any:
    """The model description (bioimageio.spec 0.5) of the files in ``folder``."""
    spec = _spec()

    size = {
        a: spec.ParameterizedSize(min=low, step=sizes.step) if sizes.step else low
        for a, low in zip("yx", sizes.min, strict=True)
    }
    halo = dict(zip("yx", sizes.halo, strict=True))
    channels = input_channels(card)
    in_axes = [
        spec.BatchAxis(),
        spec.ChannelAxis(channel_names=[spec.Identifier(n) for n in channel_names(channels)]),
        *(spec.SpaceInputAxis(id=spec.AxisId(a), size=size[a]) for a in "yx"),
    ]

    def out_axis(a: str) -> Any:
        ref = spec.SizeReference(tensor_id=spec.TensorId(INPUT_ID), axis_id=spec.AxisId(a))
        if halo[a]:
            return spec.SpaceOutputAxisWithHalo(id=spec.AxisId(a), size=ref, halo=halo[a])
        return spec.SpaceOutputAxis(id=spec.AxisId(a), size=ref)

    names = [spec.Identifier(n) for n in class_names(card)]
    full = value_range(dtype)
    data = spec.IntervalOrRatioDataDescr(
        type=dtype.name, range=(0.0, full) if dtype.kind == "u" else (None, None)
    )
    pre = Preprocessing.of_card(card)
    arch = spec.ArchitectureFromLibraryDescr(
        callable=spec.Identifier(StandaloneNetwork.__name__),
        import_from=StandaloneNetwork.__module__,
        kwargs={"card": json.loads(json.dumps(card.to_dict()))},
    )
    torch_version = spec.Version(torch.__version__.split("+")[0])
    return spec.ModelDescr(
        name=package_name(info.name),
        description=(info.description or "A UNet trained and chosen by unet-search.")[:1024],
        authors=[spec.Author(name=a) for a in (info.authors or [default_author()])],
        cite=[spec.CiteEntry(text=UNET_CITATION[0], doi=spec.Doi(UNET_CITATION[1]))],
        license=spec.LicenseId(info.license),
        documentation=spec.FileDescr(source=folder / "README.md"),
        covers=[spec.FileDescr(source=folder / "cover.png")],
        tags=["unet", "unet-search", "segmentation", "2d", "pytorch", "onnx", pre.target],
        timestamp=spec.Datetime(datetime.datetime.now(datetime.UTC)),
        inputs=[
            spec.InputTensorDescr(
                id=spec.TensorId(INPUT_ID),
                axes=in_axes,
                test_tensor=spec.FileDescr(source=folder / TEST_INPUT),
                data=data,
                preprocessing=_preprocessing(card),
            )
        ],
        outputs=[
            spec.OutputTensorDescr(
                id=spec.TensorId(OUTPUT_ID),
                axes=[
                    spec.BatchAxis(),
                    spec.ChannelAxis(channel_names=names),
                    out_axis("y"),
                    out_axis("x"),
                ],
                test_tensor=spec.FileDescr(source=folder / TEST_OUTPUT),
                data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
            )
        ],
        weights=spec.WeightsDescr(
            pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
                source=folder / "weights.pt",
                architecture=arch,
                pytorch_version=torch_version,
                dependencies=spec.FileDescr(source=folder / "environment.yaml"),
            ),
            onnx=spec.OnnxWeightsDescr(
                source=folder / "model.onnx", opset_version=18, parent="pytorch_state_dict"
            ),
        ),
        config={PROVENANCE_KEY: json.loads(json.dumps(dict(info.provenance), default=str))},
    )


def _tested(descr: Any, what: str) -> None:
    """``bioimageio test`` of the description, in this Python (both weight formats): a
    UserError with its failing checks when it does not pass."""
    from bioimageio.core import test_model

    summary = test_model(descr)
    if summary.status != "passed":
        failed = [
            f"{d.name}: {'; '.join(e.msg for e in d.errors)}"
            for d in summary.details
            if d.status == "failed"
        ]
        raise UserError(f"{what}: its BioImage.IO package fails `bioimageio test`: {failed}")


def write_package(
    model_dir: Path, out: Path, image: np.ndarray, info: PackageInfo, what: str
) -> Path:
    """The BioImage.IO package of the model saved in ``model_dir``, tested, at ``out``: a
    zip file when its name ends in ``.zip``, else a folder (which must not exist). ``image``:
    (H, W, C) in its own values, the test tensors' source (a validation image)."""
    net, card = standalone(model_dir, what)
    try:
        sizes = axis_sizes(card, net.multiple, net.fixed)
    except ValueError as err:
        raise UserError(f"{what}: cannot be a BioImage.IO package: {err}.") from None
    raw = cut_test_input(image, card, sizes)
    unit = unit_values(raw, card)
    with torch.no_grad():
        expected = net(torch.from_numpy(unit)).numpy()
    with tempfile.TemporaryDirectory(prefix="unet-search-bioimageio-") as tmp:
        folder = Path(tmp) / "files"
        folder.mkdir()
        (low_y, low_x), step = sizes.min, sizes.step
        example = torch.rand(2, unit.shape[1], low_y + step, low_x + 2 * step)
        names = (INPUT_ID, OUTPUT_ID)
        export_graph(net, example, folder / "model.onnx", what, names, dynamic_size=step > 0)
        _check_onnx(folder / "model.onnx", unit, expected, what)
        torch.save(net.state_dict(), folder / "weights.pt")
        np.save(folder / TEST_INPUT, raw)
        np.save(folder / TEST_OUTPUT, expected)
        cover(raw, expected, Preprocessing.of_card(card).threshold, folder / "cover.png")
        (folder / "README.md").write_text(documentation(card, info, sizes), "utf-8")
        (folder / "environment.yaml").write_text(environment(), "utf-8")
        descr = _description(folder, card, info, sizes, raw.dtype)
        _tested(descr, what)
        _save(descr, out, Path(tmp))
    return out


def _save(descr: Any, out: Path, tmp: Path) -> None:
    from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder

    if out.suffix.lower() == ".zip":
        staged = tmp / "package.zip"
        save_bioimageio_package(descr, output_path=staged)
    else:
        staged = tmp / "package"
        save_bioimageio_package_as_folder(descr, output_path=staged)
    out.parent.mkdir(parents=True, exist_ok=True)
    refuse_existing(out, "--out", "remove it or choose another --out")
    shutil.move(str(staged), str(out))


def check_license(license_id: str) -> None:
    """A UserError unless ``license_id`` is an SPDX license identifier the spec accepts."""
    import pydantic

    try:
        pydantic.TypeAdapter(_spec().LicenseId).validate_python(license_id)
    except pydantic.ValidationError:
        raise UserError(
            f"--license {license_id}: not an SPDX license identifier (for example "
            f"{DEFAULT_LICENSE}, CC0-1.0 or MIT; https://spdx.org/licenses/)."
        ) from None


def export_package(
    uri: str,
    out: Path,
    license_id: str = DEFAULT_LICENSE,
    authors: Sequence[str] = (),
    sample: Path | None = None,
    tracking_uri: str | None = None,
) -> Path:
    """``unet-search export --format bioimageio``: the package of model ``uri`` at ``out``
    (a ``.zip`` file or a new folder), under ``license_id`` by ``authors``. Its test image:
    ``sample`` (an image file), else the one of the package registered with the model, else
    a fixed synthetic one; its provenance the registered package's, with ``uri``."""
    from unet_search.data.decode import read_image
    from unet_search.serve.inference import resolve_model
    from unet_search.serve.onnx import check_image

    check_license(license_id)
    refuse_existing(out, "--out", "remove it or choose another --out")
    root, model_dir = resolve_model(uri, tracking_uri)
    registered = root / BIOIMAGEIO_DIR
    provenance: dict[str, Any] = {}
    description, image = "", None
    if (registered / RDF_FILE).is_file():
        import yaml

        rdf = yaml.safe_load((registered / RDF_FILE).read_text("utf-8")) or {}
        provenance = dict((rdf.get("config") or {}).get(PROVENANCE_KEY) or {})
        description = str(rdf.get("description") or "")
        image = np.load(registered / TEST_INPUT)[0].transpose(1, 2, 0)
    if sample is not None:
        image = read_image(sample)
    if image is None:
        image = check_image(Preprocessing.of_card(ModelCard.read(model_dir)))
    name = str(provenance.get("model_name") or _name_of(uri))
    info = PackageInfo(
        name, license_id, tuple(authors), description, {**provenance, "exported_from": uri}
    )
    return write_package(model_dir, out, image, info, uri)


def _name_of(uri: str) -> str:
    """A package name from a model URI or folder: ``models:/unet-quick@champion`` ->
    ``unet-quick champion``."""
    tail = uri.rstrip("/").split(":/", 1)[-1].strip("/")
    words = re.split(r"[/@]", tail)
    return " ".join(w for w in words[-2:] if w)


def package_name(name: str) -> str:
    """``name`` as the spec takes one: letters, digits, ``_+- ()``, 5 to 64 characters."""
    kept = re.sub(r"[^A-Za-z0-9_+\- ()]+", " ", name).strip()
    kept = kept if len(kept) >= 5 else f"unet-search {kept}".strip()
    return kept[:64]
