"""A model as ONNX, for apps that do not run Python: the network exported once (opset
:data:`OPSET`), its preprocessing beside it as JSON, and the onnxruntime network that the
predictor runs through the same sliding window, TTA and decoding as the PyTorch one, so the
number stays the number.

The graph (``model.onnx``): input ``image``, float32 N x C x H x W, normalized as
``preprocessing.json`` says; output ``logits``, float32 N x K x H x W at the input's size
(K = 1 for binary models: a sigmoid and ``threshold``; else arg-max), batch, height and
width dynamic. Two networks differ, and the JSON's ``onnx`` entry says how:

- the ASPP bottleneck fits its atrous rates to each map's size (ONNX convolutions have fixed
  dilations), so its graph takes the model's tile only (``"size": [h, w]``): the size every
  prediction tile has;
- the unpadded (``padding: valid``) UNet predicts by overlap-tile, so its graph is the bare
  network (``"network": "valid"``): an input of ``input_size`` pixels gives the logits of
  its central ``output_size`` pixels, ``margin`` in from the top and left; windows of
  ``input_size`` stepped by ``output_size`` over the image mirror-padded by ``margin`` cover
  it exactly (other sizes work where the network's levels divide evenly).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unet_search.core.errors import UserError
from unet_search.core.files import refuse_existing, written_whole
from unet_search.core.names import ONNX_DIR, ONNX_FILE, PREPROCESSING_FILE
from unet_search.models.blocks import ASPP
from unet_search.models.build import load_model_dir
from unet_search.models.card import ModelCard
from unet_search.models.unet import valid_input_size
from unet_search.train.sliding import Preprocessing

__all__ = [
    "INPUT",
    "OnnxNetwork",
    "OPSET",
    "OUTPUT",
    "padded_forward",
    "TOLERANCE",
    "check_image",
    "check_onnx",
    "export_graph",
    "export_model",
    "export_onnx",
    "find_onnx",
    "TemporaryOnnx",
]

OPSET = 18
INPUT, OUTPUT = "image", "logits"
# The largest |ONNX - PyTorch| logit allowed at export, relative to max(1, the largest
# |logit|): float32 kernels sum in other orders. Measured on untrained models of every
# family: at most 6e-6 (the transformer bottleneck; PyTorch float32 itself is 5e-6 from
# float64 there), and tests/serve/test_onnx.py asserts it on trained ones.
TOLERANCE = 1e-4


def padded_forward(net: nn.Module, x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``net`` as :class:`~unet_search.models.build.SegmentationModel` runs it (the input
    mirror-padded at the bottom and right to a multiple of ``multiple``, the output cropped
    back), written so that the padded size is a multiple by construction: torch.export then
    keeps height and width symbolic through every level."""
    h, w, m = x.shape[-2], x.shape[-1], multiple
    x = F.pad(x, (0, m * ((w + m - 1) // m) - w, 0, m * ((h + m - 1) // m) - h), "reflect")
    return net(x)[..., :h, :w]


class _Padded(nn.Module):
    """A padded network (:func:`padded_forward`) as a module, for the exporter."""

    def __init__(self, net: nn.Module, depth: int) -> None:
        super().__init__()
        self.net, self.multiple = net, 2**depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return padded_forward(self.net, x, self.multiple)


@dataclass(frozen=True)
class _Graph:
    module: nn.Module
    example: torch.Tensor
    info: dict[str, Any]  # preprocessing.json's "onnx" entry


def _graph(model: nn.Module, pre: Preprocessing) -> _Graph:
    """What is exported for ``model``, an example input and how the graph is to be fed."""
    net, depth = getattr(model, "net", model), int(getattr(model, "depth", 0))
    tile = pre.tiling.tile
    info: dict[str, Any] = {
        "input_name": INPUT,
        "output_name": OUTPUT,
        "dtype": "float32",
        "layout": "NCHW",
        "opset": OPSET,
        "channels": pre.in_channels,
        "network": "same",
        "size": None,  # any height and width
    }
    if getattr(model, "padding", "same") == "valid":
        (in_h, m_h), (in_w, m_w) = (valid_input_size(side, depth) for side in tile)
        info.update(
            network="valid",
            depth=depth,
            input_size=[in_h, in_w],
            output_size=list(tile),
            margin=[m_h, m_w],
        )
        example = torch.rand(2, pre.in_channels, in_h, in_w)
        return _Graph(net, example, info)
    if any(isinstance(m, ASPP) for m in model.modules()):
        info["size"] = list(tile)
    return _Graph(_Padded(net, depth), torch.rand(2, pre.in_channels, *tile), info)


def _export(graph: _Graph, out: Path, what: str) -> None:
    export_graph(graph.module, graph.example, out, what, dynamic_size=graph.info["size"] is None)


def export_graph(
    module: nn.Module,
    example: torch.Tensor,
    out: Path,
    what: str,
    names: tuple[str, str] = (INPUT, OUTPUT),
    dynamic_size: bool = True,
) -> None:
    """``module`` traced on ``example`` (N x C x H x W) and written to ``out`` as ONNX (opset
    :data:`OPSET`), its batch dynamic, and its height and width when ``dynamic_size``; a
    :class:`UserError` naming ``what`` with the exporter's reason in one line."""
    dims: dict[int, str] = {0: "batch"}
    if dynamic_size:
        dims.update({2: "height", 3: "width"})
    quiet = io.StringIO()  # the exporter prints its steps; a failure's story goes in the error
    loggers = [logging.getLogger(n) for n in ("torch.export", "torch._dynamo", "torch.onnx")]
    levels = [log.level for log in loggers]
    try:
        for log in loggers:
            log.setLevel(logging.CRITICAL)
        with (
            contextlib.redirect_stdout(quiet),
            contextlib.redirect_stderr(quiet),
            warnings.catch_warnings(),
            torch.no_grad(),
        ):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module.eval(),
                (example,),
                dynamo=True,
                opset_version=OPSET,
                input_names=[names[0]],
                output_names=[names[1]],
                dynamic_shapes=(dims,),
                verbose=False,
            )
            assert program is not None
            program.save(str(out))
    except Exception as err:
        raise UserError(f"{what}: cannot be exported to ONNX: {_cause(err)}") from None
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def _cause(err: BaseException) -> str:
    """The exporter's reason in one line (its messages hold pages of advice and graphs): the
    exception, an unsupported operator where it names one, and the model code that raised."""
    text = str(err)
    summary = text.split("## Exception summary", 1)[-1]
    lines = [line.strip() for line in summary.splitlines() if line.strip()]
    reason = next((line for line in lines if line.startswith("<class")), lines[0] if lines else "")
    out = f"{type(err).__name__}: {reason}"
    unsupported = next((line.strip() for line in text.splitlines() if "nsupported" in line), "")
    if unsupported and unsupported not in out:
        out += f"; {unsupported}"
    marker = "The following call raised this error:"
    if marker in text:
        where = next(
            (ln.strip() for ln in text.split(marker, 1)[1].splitlines() if ln.strip()), ""
        )
        out += f" (raised at {where})" if where else ""
    return out[:600]


def export_onnx(
    model_dir: Path, out_dir: Path, check: np.ndarray | None = None, what: str | None = None
) -> float | None:
    """Write ``model.onnx`` and ``preprocessing.json`` of the model saved in ``model_dir``
    into ``out_dir``; with ``check`` (an image as the files decode), predict it with both
    runtimes and return the largest logit difference (a :class:`UserError` above
    :data:`TOLERANCE`, nothing left in ``out_dir``). ``what`` names the model in errors."""
    what = what or str(model_dir)
    model, card = load_model_dir(model_dir)
    pre = Preprocessing.of_card(card)
    graph = _graph(model, pre)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / ONNX_FILE
    _export(graph, onnx_path, what)
    with torch.no_grad():
        logits = int(graph.module(graph.example).shape[1])
    preprocessing = {**card.preprocessing, "onnx": {**graph.info, "logits": logits}}
    (out_dir / PREPROCESSING_FILE).write_text(json.dumps(preprocessing, indent=2), "utf-8")
    if check is None:
        return None
    try:
        return check_onnx(model_dir, out_dir, check, what)
    except UserError:
        onnx_path.unlink(missing_ok=True)
        (out_dir / PREPROCESSING_FILE).unlink(missing_ok=True)
        raise


def check_onnx(model_dir: Path, onnx_dir: Path, image: np.ndarray, what: str) -> float:
    """The largest |ONNX - PyTorch| logit over ``image`` predicted whole by both runtimes;
    a :class:`UserError` where it exceeds :data:`TOLERANCE` (relative to the logits)."""
    from unet_search.serve.inference import Predictor

    torch_logits = Predictor.from_dir(model_dir).predict_logits([image])[0]
    onnx_logits = Predictor.from_dir(model_dir, runtime="onnx", onnx_dir=onnx_dir)
    diff = float((onnx_logits.predict_logits([image])[0] - torch_logits).abs().max())
    scale = max(1.0, float(torch_logits.abs().max()))
    if not diff <= TOLERANCE * scale:
        raise UserError(
            f"{what}: its ONNX export predicts other logits than the model (largest "
            f"difference {diff:.3g}, allowed {TOLERANCE * scale:.3g}): not exported."
        )
    return diff


def find_onnx(root: Path, model_dir: Path) -> Path | None:
    """The folder of a model's ONNX files: ``onnx/`` of the MLflow model at ``root``, or
    of the model folder; None when the model has none."""
    for folder in (root / ONNX_DIR, model_dir / ONNX_DIR):
        if (folder / ONNX_FILE).is_file() and (folder / PREPROCESSING_FILE).is_file():
            return folder
    return None


def _providers(device: torch.device) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxNetwork:
    """An exported network run by onnxruntime, called where the predictor calls the PyTorch
    model: (N, C, H, W) float32 tensors in, logits out. A ``valid`` network is its own
    ``net`` (the predictor's overlap-tile feeds it windows), as the PyTorch model's is."""

    def __init__(self, onnx_dir: Path, device: str | torch.device = "cpu") -> None:
        import onnxruntime as ort

        self.device = torch.device(device)
        self.info = json.loads((onnx_dir / PREPROCESSING_FILE).read_text("utf-8"))["onnx"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # as PyTorch's, side by side
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(
            str(onnx_dir / ONNX_FILE), options, providers=_providers(self.device)
        )
        self.padding, self.depth = self.info["network"], int(self.info.get("depth", 0))
        self.net = self if self.padding == "valid" else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run([OUTPUT], {INPUT: batch})
        return torch.from_numpy(logits).to(x.device)

    def eval(self) -> OnnxNetwork:
        return self

    def to(self, device: str | torch.device) -> OnnxNetwork:
        return self


class TemporaryOnnx:
    """ONNX files exported into a temporary folder for a model that has none (registered
    before ONNX, or with ``search.onnx: false``), removed with the object."""

    def __init__(self, model_dir: Path) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="unet-search-onnx-")
        self.path = Path(self._tmp.name)
        export_onnx(model_dir, self.path)


def check_image(pre: Preprocessing) -> np.ndarray:
    """A fixed image of one and a half tiles (smooth shapes and noise) for checking an
    export where no real one is at hand: every tile boundary and the image's border."""
    h, w = (int(side / pre.tiling.scale * 1.5) + 1 for side in pre.tiling.tile)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    blobs = 127 * (np.sin(yy / 7.0) * np.cos(xx / 5.0) > 0.3)
    image = blobs[..., None] + rng.integers(0, 128, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def export_model(uri: str, out: Path, tracking_uri: str | None = None) -> tuple[Path, Path]:
    """``unet-search export``: the ONNX file of model ``uri`` written to ``out`` and its
    preprocessing to ``<out stem>.preprocessing.json`` beside it; the export registered with
    the model when it has one (the file checked at registration), else a new one checked on
    a fixed image. Neither file may exist already."""
    from unet_search.serve.inference import resolve_model

    if out.suffix.lower() != ".onnx":
        raise UserError(f"--out {out}: an ONNX file's name ends in .onnx.")
    json_out = out.with_name(f"{out.stem}.preprocessing.json")
    for path in (out, json_out):
        refuse_existing(path, "--out", "remove it or choose another --out")
    root, model_dir = resolve_model(uri, tracking_uri)
    found = find_onnx(root, model_dir)
    with tempfile.TemporaryDirectory(prefix="unet-search-onnx-") as tmp:
        if found is None:
            found = Path(tmp)
            check = check_image(Preprocessing.of_card(ModelCard.read(model_dir)))
            export_onnx(model_dir, found, check, what=uri)
        out.parent.mkdir(parents=True, exist_ok=True)
        for name, target in ((PREPROCESSING_FILE, json_out), (ONNX_FILE, out)):
            with written_whole(target) as partial:
                shutil.copyfile(found / name, partial)
    return out, json_out
