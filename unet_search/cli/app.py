"""The ``unet-search`` parser and ``main``: every subcommand, its flags and examples; a
``UserError`` becomes one line and exit code 1."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from unet_search.cli.commands import (
    cmd_best,
    cmd_check_data,
    cmd_export,
    cmd_jobs,
    cmd_make_data,
    cmd_models,
    cmd_plan,
    cmd_report,
    cmd_resume,
    cmd_search,
    cmd_submit,
    cmd_train,
)
from unet_search.cli.predict import cmd_predict
from unet_search.core.errors import UserError, without_reprs

__all__ = ["EXAMPLES", "build_parser", "main"]


EXAMPLES = {
    "make-data": "example: unet-search make-data synthetic data/synth --n 200 --size 128",
    "check-data": "example: unet-search check-data data/stage1_train --set val_fraction=0.2",
    "train": (
        "example: unet-search train --data data/synth --set preset=seed_keras "
        "--set epochs=5 --workers 2"
    ),
    "models": "example: unet-search models",
    "search": (
        "example: unet-search search --space search_spaces/quick.yaml --data data/synth "
        "--set epochs=2 --set search.num_samples=4"
    ),
    "best": "example: unet-search best quick-1 --top 5",
    "report": "example: unet-search report quick-1   (then open the printed index.html)",
    "submit": (
        "example: unet-search submit --address http://127.0.0.1:8265 --space "
        "search_spaces/quick.yaml --data /shared/data --wait"
    ),
    "jobs": "example: unet-search jobs logs raysubmit_XYZ",
    "resume": "example: unet-search resume quick-3",
    "plan": "example: unet-search plan data/nuclei --out search_spaces/nuclei.yaml",
    "predict": (
        "example: unet-search predict --model models:/unet-quick@champion "
        "--input data/new_images --output masks/"
    ),
    "export": (
        "example: unet-search export models:/unet-quick@champion --format onnx --out "
        "model.onnx; or: unet-search export models:/unet-quick@champion --format bioimageio "
        "--out unet-quick.zip --license CC-BY-4.0 --author 'Ada Lovelace'"
    ),
}


Parser = argparse.ArgumentParser
SET_HELP = (
    "override any config field, e.g. epochs=2 or model.depth=3; preset=seed_keras applies a preset"
)
DATA_HELP = "dataset folder, or an s3:// / gs:// URI"
ADDRESS_HELP = "Ray cluster address (default: $RAY_ADDRESS or local)"


def _overrides(p: Parser, help_text: str | None = None) -> None:
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help_text
    )


def _config_args(p: Parser) -> None:
    p.add_argument("--config", type=Path, help="run config YAML (sections or flat keys)")
    _overrides(p, SET_HELP)


def _budget_arg(p: Parser) -> None:
    p.add_argument(
        "--budget",
        help="compute budget of the plan that fills `auto` settings: cpu-quick | cpu | "
        "gpu-<GiB> (default: cpu-quick without a GPU, else the GPU's memory)",
    )


def _make_data_args(p: Parser) -> None:
    p.add_argument("kind", choices=["synthetic"])
    p.add_argument("out", type=Path)
    p.add_argument("--n", type=int, default=200, help="number of images (default 200)")
    p.add_argument("--size", type=int, default=128, help="image height in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-size",
        type=int,
        help="draw each image's height and width from [--size, --max-size] (large, non-square)",
    )
    p.add_argument(
        "--object-px",
        type=float,
        help="nuclei about this many pixels across, whatever the image size "
        "(default: they grow with the image)",
    )
    p.add_argument(
        "--style",
        choices=["hard", "fluorescence", "epithelium"],
        default="hard",
        help="hard: built to defeat a plain threshold (default); fluorescence: bright nuclei "
        "on a dark, uneven background, where Otsu is strong; epithelium: cells tiling the "
        "plane behind membranes one pixel thin (--object-px: the cells' size)",
    )
    p.add_argument(
        "--classes",
        type=int,
        choices=[2, 3, 4],
        default=2,
        help="2: binary, one mask per nucleus (DSB2018 layout, default); 3 or 4: each nucleus "
        "one of the foreground classes, stained apart, class-index masks (images/masks layout)",
    )


def _check_data_args(p: Parser) -> None:
    p.add_argument("data", help=DATA_HELP)
    _config_args(p)


def _train_args(p: Parser) -> None:
    p.add_argument("--data", required=True, help=DATA_HELP)
    _config_args(p)
    p.add_argument("--workers", type=int, help="Ray Train workers (DDP); sets num_workers")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per worker; sets gpus_per_worker")
    p.add_argument("--experiment", default="unet-search-train", help="MLflow experiment name")
    p.add_argument("--run-name", help="MLflow run name (default: from the architecture)")
    _budget_arg(p)


def _plan_args(p: Parser) -> None:
    p.add_argument("data", help=DATA_HELP)
    _budget_arg(p)
    p.add_argument("--out", type=Path, help="also write a search space with the plan (YAML)")
    _config_args(p)


def _search_args(p: Parser) -> None:
    p.add_argument("--space", type=Path, required=True, help="search space YAML")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--name", help="search name (default: <space name>-<n>, the first unused)")
    p.add_argument("--model-name", help="registered model name (default: from the space)")
    p.add_argument("--address", help=ADDRESS_HELP)
    _overrides(p, "override a fixed setting (epochs=2) or a search setting (search.num_samples=4)")
    p.add_argument(
        "--storage",
        help="Ray results path or URI every node can reach (default: "
        "$UNET_SEARCH_STORAGE or the work dir)",
    )


def _resume_args(p: Parser) -> None:
    p.add_argument("name", help="search name, e.g. quick-3")
    p.add_argument("--address", help=ADDRESS_HELP)
    p.add_argument("--storage", help="the storage the search ran with")


def _submit_args(p: Parser) -> None:
    p.add_argument(
        "--address",
        help="Ray dashboard / Jobs API URL (default: "
        "$UNET_SEARCH_DASHBOARD or http://127.0.0.1:8265)",
    )
    p.add_argument("--space", type=Path, required=True, help="search space YAML (shipped)")
    p.add_argument("--data", required=True, help="dataset path on the cluster")
    p.add_argument("--name", help="search name")
    p.add_argument("--model-name", help="registered model name")
    p.add_argument("--storage", help="Ray results path or URI every node can reach")
    _overrides(p)
    p.add_argument("--wait", action="store_true", help="follow the logs; exit with the job")


def _jobs_args(p: Parser) -> None:
    p.add_argument("action", choices=["status", "logs", "stop"])
    p.add_argument("job_id")
    p.add_argument("--address", help="Ray dashboard / Jobs API URL")


def _best_args(p: Parser) -> None:
    p.add_argument("name", help="search name, e.g. quick-1")
    p.add_argument("--top", type=int, default=10)


def _report_args(p: Parser) -> None:
    p.add_argument("name", help="search name, e.g. quick-1")
    p.add_argument("--log", action="store_true", help="also upload it to the search's MLflow run")


def _predict_args(p: Parser) -> None:
    p.add_argument("--model", required=True, help="models:/NAME@champion, runs:/..., or a dir")
    p.add_argument("--input", type=Path, required=True, help="an image file or a folder")
    p.add_argument(
        "--output",
        type=Path,
        required=True,
        help="folder for the PNGs, <image stem>.png each (not the input folder; an existing "
        "PNG there is refused unless --overwrite)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace masks (and the --objects file) that exist already",
    )
    p.add_argument(
        "--output-kind",
        choices=["mask", "instances"],
        default="mask",
        help="mask: the mask (0/255 binary, class indices otherwise; default); instances: "
        "16-bit instance labels, 0 the background, 1..n the objects (binary models)",
    )
    p.add_argument(
        "--objects",
        type=Path,
        metavar="FILE.csv",
        help="also write one row per object: image, id, area, centroid, bounding box, mean "
        "intensity (binary models)",
    )
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        help="where the model runs (default: cuda when a GPU is visible, else cpu)",
    )
    p.add_argument(
        "--tta",
        choices=["none", "flips"],
        help="test-time flips: average the logits of the image and its mirror images "
        "(default: as the model was validated)",
    )
    p.add_argument(
        "--runtime",
        choices=["torch", "onnx"],
        default="torch",
        help="what runs the network: torch (default) or onnx (onnxruntime on the model's "
        "ONNX file, through the same tiles, TTA and decoding)",
    )


def _export_args(p: Parser) -> None:
    p.add_argument(
        "model", help="models:/NAME@champion, models:/NAME/VERSION, runs:/..., or a dir"
    )
    p.add_argument(
        "--format",
        choices=["onnx", "bioimageio"],
        default="onnx",
        help="onnx: the network as ONNX, its preprocessing as JSON beside it; bioimageio: a "
        "BioImage.IO model package (rdf.yaml, ONNX and PyTorch weights, test tensors) for "
        "Fiji/deepImageJ, ilastik and QuPath, tested as `bioimageio test` tests it",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="PATH",
        help="onnx: FILE.onnx (its preprocessing goes to FILE.preprocessing.json beside it); "
        "bioimageio: FILE.zip, or a new folder",
    )
    p.add_argument(
        "--license",
        metavar="SPDX_ID",
        help="bioimageio: the package's license, an SPDX id (default: CC-BY-4.0)",
    )
    p.add_argument(
        "--author",
        dest="authors",
        action="append",
        default=[],
        metavar="NAME",
        help="bioimageio: an author (repeat for several; default: git's user.name, else your "
        "login name)",
    )
    p.add_argument(
        "--sample",
        type=Path,
        metavar="IMAGE",
        help="bioimageio: the image its test tensors and cover are cut from (default: the "
        "registered package's validation image, else a synthetic one)",
    )


def _no_args(p: Parser) -> None:
    del p


# name -> (help, its arguments, the function that runs it), in the order `--help` lists them
SUBCOMMANDS: dict[
    str, tuple[str, Callable[[Parser], None], Callable[[argparse.Namespace], int]]
] = {
    "make-data": (
        "write a synthetic nuclei-like dataset (DSB2018 layout, or multi-class)",
        _make_data_args,
        cmd_make_data,
    ),
    "check-data": (
        "validate a dataset and print its summary and fingerprint",
        _check_data_args,
        cmd_check_data,
    ),
    "train": (
        "train one configuration with Ray Train, tracked as one MLflow run",
        _train_args,
        cmd_train,
    ),
    "plan": (
        "plan patch size, scale, depth, batch and normalization from a dataset",
        _plan_args,
        cmd_plan,
    ),
    "models": (
        "list architectures, presets (with parameter counts) and encoders",
        _no_args,
        cmd_models,
    ),
    "search": (
        "search architectures and hyperparameters (Ray Tune, Optuna TPE, ASHA)",
        _search_args,
        cmd_search,
    ),
    "resume": ("continue an interrupted search where it stopped", _resume_args, cmd_resume),
    "submit": ("submit a search to a Ray cluster as a Ray job", _submit_args, cmd_submit),
    "jobs": ("status, logs or stop of a submitted job", _jobs_args, cmd_jobs),
    "best": ("print the best trials of a search", _best_args, cmd_best),
    "report": (
        "write the HTML report (and PNGs) of a search to <work dir>/reports/NAME",
        _report_args,
        cmd_report,
    ),
    "predict": (
        "write one mask PNG per input image with a registered model",
        _predict_args,
        cmd_predict,
    ),
    "export": (
        "write a model as ONNX (with its preprocessing as JSON) or as a BioImage.IO package",
        _export_args,
        cmd_export,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unet-search",
        description="Find the best UNet for your segmentation data with Ray, Optuna and MLflow.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES[name])
        add_arguments(p)
        p.set_defaults(func=run)
    return parser


class _LogWhenNeeded(logging.FileHandler):
    """A log file whose folder and file are made at its first record, not before."""

    def _open(self):  # type: ignore[no-untyped-def]
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def _warnings_to_the_log() -> None:
    """Python's warnings (third-party ones a user can do nothing about) go to
    ``<work_dir>/logs/unet-search.log``, written only when one comes, not to the terminal; a
    search sends them to its own log instead (:func:`unet_search.search.setup.route_ray_logs`)."""
    from unet_search.core.env import work_dir

    logging.captureWarnings(True)
    logger = logging.getLogger("py.warnings")
    if any(getattr(h, "unet_search", False) for h in logger.handlers):
        return
    path = work_dir() / "logs" / "unet-search.log"
    handler = _LogWhenNeeded(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.unet_search = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    for noisy in ("mlflow", "alembic"):  # their INFO lines (DB migrations...) are not news
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if args.command in ("search", "resume", "train", "predict", "export"):
            _warnings_to_the_log()
        return int(args.func(args))
    except UserError as err:
        print(f"error: {without_reprs(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
