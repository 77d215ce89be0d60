"""``unet-search predict``: one mask (or instance label image) PNG per input image, and an
object table. Nothing the user has is lost: every input is decoded and every output name
checked before the first file is written (an existing one is replaced only with
``--overwrite``), and each file is written whole or not at all."""

from __future__ import annotations

import argparse
from pathlib import Path

from unet_search.cli.terminal import progress_bar
from unet_search.core.errors import UserError
from unet_search.core.files import refuse_existing, written_whole

__all__ = ["cmd_predict", "planned_outputs"]


CHUNK = 16  # images predicted at a time


def _inputs(source: Path) -> list[Path]:
    """The image files of ``--input`` (a file, or a folder's images by name)."""
    from unet_search.data.scan import IMAGE_SUFFIXES

    if not source.exists():
        raise UserError(f"--input {source}: does not exist.")
    files = (
        [source]
        if source.is_file()
        else sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    )
    if not files:
        raise UserError(f"--input {source}: no images ({', '.join(IMAGE_SUFFIXES)}) found.")
    return files


def planned_outputs(
    files: list[Path], output: Path, objects: Path | None, overwrite: bool
) -> list[Path]:
    """The PNG each input becomes (``<output>/<stem>.png``), checked before anything is
    written: ``--output`` may not be an input's folder, no two inputs may share a stem, and
    an existing output (or ``--objects`` file) is replaced only with ``overwrite``."""
    folders = {f.parent.resolve() for f in files}
    if output.resolve() in folders:
        raise UserError(
            f"--output {output}: is the folder of the input images; choose another folder "
            "(nothing was written)."
        )
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output}: exists and is not a folder (nothing was written).")
    by_output: dict[Path, Path] = {}
    for path in files:
        target = output / f"{path.stem}.png"
        if target in by_output:
            raise UserError(
                f"--input: {by_output[target]} and {path} would both be written as {target}; "
                "rename one or predict them apart (nothing was written)."
            )
        by_output[target] = path
    outputs = list(by_output)  # in the inputs' order
    if not overwrite:
        how = "pass --overwrite to replace it"
        for path in outputs:
            refuse_existing(path, "--output", f"{how}, or choose another --output")
        if objects is not None:
            refuse_existing(objects, "--objects", f"{how}, or choose another file")
    return outputs


def _check_decodes(files: list[Path]) -> None:
    """Every input decodes (the first that does not: a DataError naming it), before a file
    is written."""
    from unet_search.data.decode import read_image

    for path in files:
        read_image(path)


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from unet_search.data.decode import read_image
    from unet_search.serve.inference import load_model
    from unet_search.serve.objects import object_rows, write_objects

    files = _inputs(args.input)
    outputs = planned_outputs(files, args.output, args.objects, args.overwrite)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible to this process.")
    predictor = load_model(args.model, device=device, tta=args.tta, runtime=args.runtime)
    kind, objects_csv = args.output_kind, args.objects
    if (kind == "instances" or objects_csv) and predictor.pre.num_classes > 2:
        what = "--output-kind instances" if kind == "instances" else "--objects"
        raise UserError(
            f"{what}: instances are objects of a binary model, but {args.model} has "
            f"{predictor.pre.num_classes} classes: predict masks (--output-kind mask)."
        )
    _check_decodes(files)
    binary = predictor.pre.num_classes == 1
    args.output.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    bar = progress_bar(len(files), "predicting")
    try:
        for start in range(0, len(files), CHUNK):
            chunk = files[start : start + CHUNK]
            results: list[tuple[np.ndarray, np.ndarray | None]]
            if kind == "mask" and not objects_csv:
                results = [(mask, None) for mask in predictor.predict(chunk)]
            else:
                results = [(m, i) for m, i in predictor.predict_both(chunk)]
            for i, path in enumerate(chunk):
                mask, instances = results[i]
                if kind == "instances" and instances is not None:  # 16-bit, 0 the background
                    picture = Image.fromarray(instances.astype(np.uint16))
                else:
                    picture = Image.fromarray((mask * 255 if binary else mask).astype(np.uint8))
                with written_whole(outputs[start + i]) as partial:
                    picture.save(partial, format="PNG")
                if objects_csv and instances is not None:
                    rows.extend(object_rows(path.stem, read_image(path), instances))
            bar(len(chunk))
    finally:
        bar(0, done=True)
    what = "instance label image(s)" if kind == "instances" else "mask(s)"
    print(f"wrote {len(files)} {what} to {args.output}")
    if objects_csv:
        count = write_objects(objects_csv, rows)
        print(f"wrote {count} object(s) of {len(files)} image(s) to {objects_csv}")
    return 0
