"""``unet-search predict`` never destroys a file: every input decoded and every output name
checked before the first mask is written, existing files replaced only with ``--overwrite``,
each file written whole; its instance labels and object table match the truth. Run in this
process (``main``), on models trained here (the main pytest's: the side run trains none)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from conftest import TargetModels, TrainedModel
from PIL import Image

from unet_search.cli.app import main
from unet_search.core.errors import UserError
from unet_search.core.files import written_whole


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


@pytest.fixture()
def images(trained_model: TrainedModel, tmp_path: Path) -> Path:
    """Three validation images of the trained model's data, as PNG files."""
    arrays = trained_model.arrays
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(arrays.image(i)).save(folder / f"{arrays.names[i]}.png")
    return folder


def _predict(model: Path, *args: str) -> int:
    return main(["predict", "--model", str(model), *args])


def test_predict_refuses_to_replace_what_exists_and_overwrite_replaces_it(
    trained_model: TrainedModel, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, table = tmp_path / "masks", tmp_path / "objects.csv"
    model = trained_model.path
    assert _predict(model, "--input", str(images), "--output", str(out)) == 0
    arrays = trained_model.arrays
    for i in range(3):  # the masks are the trained model's: they score on its own images
        mask = np.asarray(Image.open(out / f"{arrays.names[i]}.png")) > 0
        assert _dice(mask, arrays.mask(i) > 0) > 0.5
    capsys.readouterr()

    (out / f"{arrays.names[0]}.png").write_bytes(b"the user's own file")
    before = _digests(out)
    assert _predict(model, "--input", str(images), "--output", str(out)) == 1
    err = capsys.readouterr().err
    first = out / f"{arrays.names[0]}.png"
    assert err == (
        f"error: --output {first}: exists; pass --overwrite to replace it, or choose another "
        "--output (nothing was written).\n"
    )
    assert _digests(out) == before  # every byte as it was

    table.write_text("the user's table\n")
    args = ("--input", str(images), "--output", str(tmp_path / "new"), "--objects", str(table))
    assert _predict(model, *args) == 1
    assert "error: --objects " in capsys.readouterr().err
    assert table.read_text() == "the user's table\n" and not (tmp_path / "new").exists()

    assert _predict(model, "--input", str(images), "--output", str(out), "--overwrite") == 0
    assert first.read_bytes() != b"the user's own file"
    assert sorted(_digests(out)) == sorted(before)  # the same names, no partial file left


def test_predict_never_writes_over_its_inputs_or_merges_two_of_them(
    trained_model: TrainedModel, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _digests(images)
    assert _predict(trained_model.path, "--input", str(images), "--output", str(images)) == 1
    assert "is the folder of the input images" in capsys.readouterr().err
    nested = images / "." / ""  # the same folder, spelled otherwise
    assert _predict(trained_model.path, "--input", str(images), "--output", str(nested)) == 1
    capsys.readouterr()
    assert _digests(images) == before

    twin = images / f"{trained_model.arrays.names[0]}.tif"
    Image.open(images / f"{trained_model.arrays.names[0]}.png").save(twin)
    out = images.parent / "out"
    assert _predict(trained_model.path, "--input", str(images), "--output", str(out)) == 1
    err = capsys.readouterr().err
    assert f"{twin.with_suffix('.png')} and {twin} would both be written as" in err
    assert not out.exists()


def test_an_unreadable_input_is_named_before_anything_is_written(
    trained_model: TrainedModel, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (images / "zz-notes.png").write_text("not an image")
    out = images.parent / "out"
    assert _predict(trained_model.path, "--input", str(images), "--output", str(out)) == 1
    err = capsys.readouterr().err
    assert err == (
        f"error: {images / 'zz-notes.png'}: is not an image file (no PNG, JPEG, TIFF or other "
        "format PIL reads).\n"
    )
    assert " object at 0x" not in err and not out.exists()  # no empty folder left behind


def test_a_file_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "mask.png"
    target.write_bytes(b"old")
    with pytest.raises(UserError), written_whole(target) as partial:
        partial.write_bytes(b"half")
        raise UserError("interrupted")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["mask.png"]
    with written_whole(target) as partial:
        partial.write_bytes(b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["mask.png"]
    # a folder (make-data's dataset): an empty one there is replaced, a half-made one removed
    folder = tmp_path / "data"
    folder.mkdir()
    with pytest.raises(UserError), written_whole(folder) as partial:
        (partial / "a").mkdir(parents=True)
        raise UserError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "mask.png"]
    assert not any(folder.iterdir())
    with written_whole(folder) as partial:
        (partial / "a").mkdir(parents=True)
    assert [p.name for p in folder.iterdir()] == ["a"]


def test_predict_writes_instance_labels_and_an_object_table_that_match_the_truth(
    epithelium_models: TargetModels,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--output-kind instances``: a 16-bit label PNG per image whose objects match the
    truth's (the held-out cells: DSB score of the files as written), and ``--objects``: one
    row per object of those files, its area and mean intensity measured on them."""
    import csv

    from unet_search.core.sections import DataConfig
    from unet_search.data.dataset import load_dataset
    from unet_search.train.metrics import instance_scores

    held_out = epithelium_models.held_out
    images = tmp_path / "images"
    images.mkdir()
    for folder in sorted(held_out.iterdir()):
        (images / f"{folder.name}.png").write_bytes(
            (folder / "images" / f"{folder.name}.png").read_bytes()
        )
    table = tmp_path / "objects.csv"
    model = str(epithelium_models.models["boundary"])
    monkeypatch.setenv("UNET_SEARCH_HOME", str(tmp_path / "home"))
    args = ["predict", "--model", model, "--input", str(images), "--output", str(tmp_path / "out")]
    assert main([*args, "--output-kind", "instances", "--objects", str(table)]) == 0
    printed = capsys.readouterr().out
    truth = load_dataset(held_out, DataConfig())
    rows = list(csv.DictReader(table.open()))
    columns = "image id area centroid_y centroid_x bbox_top bbox_left bbox_bottom bbox_right"
    assert list(rows[0]) == [*columns.split(), "mean_intensity"]
    scores, counted = [], 0
    for i, name in enumerate(truth.names):
        with Image.open(tmp_path / "out" / f"{name}.png") as png:
            assert png.mode.startswith("I;16") or png.mode == "I"
            labels = np.asarray(png).astype(np.int64)
        assert labels.shape == truth.instances(i).shape
        scores.append(instance_scores(labels, truth.instances(i))[0])
        mine = [r for r in rows if r["image"] == name]
        assert [int(r["id"]) for r in mine] == sorted(set(np.unique(labels)) - {0})
        grey = truth.image(i).mean(axis=2)
        for r in mine[:5]:
            pixels = labels == int(r["id"])
            assert int(r["area"]) == pixels.sum()
            assert float(r["mean_intensity"]) == pytest.approx(grey[pixels].mean(), abs=1e-2)
        counted += len(mine)
    assert np.mean(scores) >= 0.4, scores  # the cells, each on its own
    assert printed.splitlines() == [
        f"wrote 3 instance label image(s) to {tmp_path / 'out'}",
        f"wrote {counted} object(s) of 3 image(s) to {table}",
    ]
