"""Find a dataset's image/mask pairs in one of the two layouts (``images/`` + ``masks/``, or
DSB2018's one folder per image) and report every file that breaks a rule at once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unet_search.core.errors import DataError

__all__ = [
    "DatasetIndex",
    "IMAGE_SUFFIXES",
    "MASK_SUFFIXES",
    "MAX_ERRORS_SHOWN",
    "raise_if",
    "Sample",
    "scan_dataset",
]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


MASK_SUFFIXES = (".png", ".tif", ".tiff")


MAX_ERRORS_SHOWN = 20


@dataclass(frozen=True)
class Sample:
    """One image and its mask files (several instance masks in the DSB2018 layout)."""

    name: str
    image: Path
    masks: tuple[Path, ...]


@dataclass(frozen=True)
class DatasetIndex:
    """The files of a dataset, in a fixed (sorted) order."""

    root: Path
    layout: str
    samples: tuple[Sample, ...]

    def files(self) -> list[Path]:
        return [p for s in self.samples for p in (s.image, *s.masks)]


def _under_root(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _listing(
    folder: Path, suffixes: tuple[str, ...], root: Path, errors: list[str]
) -> dict[str, Path]:
    """stem -> file for the visible files of a folder; anything else is an error."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue  # .DS_Store, editor swap files: not data
        if not _under_root(path, root):
            errors.append(
                f"{path}: is a link to outside the data root {root}; copy the file "
                "into the dataset instead."
            )
        elif path.is_dir():
            errors.append(
                f"{path}: unexpected folder; expected image files ({', '.join(suffixes)})."
            )
        elif path.suffix.lower() not in suffixes:
            errors.append(
                f"{path}: not a supported file type; expected one of {', '.join(suffixes)}."
            )
        elif path.stem in found:
            errors.append(
                f"{path}: two files share the stem {path.stem!r} "
                f"({found[path.stem].name} and {path.name})."
            )
        else:
            found[path.stem] = path
    return found


def _scan_images_masks(root: Path, errors: list[str]) -> list[Sample]:
    images = _listing(root / "images", IMAGE_SUFFIXES, root, errors)
    masks = _listing(root / "masks", MASK_SUFFIXES, root, errors)
    for stem in sorted(images.keys() - masks.keys()):
        errors.append(f"{images[stem]}: image has no mask (expected masks/{stem}.png or .tif).")
    for stem in sorted(masks.keys() - images.keys()):
        errors.append(
            f"{masks[stem]}: mask has no image (expected images/{stem}.png, .jpg or .tif)."
        )
    return [
        Sample(stem, images[stem], (masks[stem],)) for stem in sorted(images.keys() & masks.keys())
    ]


def _scan_dsb(root: Path, folders: list[Path], errors: list[str]) -> list[Sample]:
    samples = []
    for folder in folders:
        if not (folder / "images").is_dir():
            errors.append(
                f"{folder}: has no images/ folder (DSB2018 layout: "
                f"{folder.name}/images/{folder.name}.png)."
            )
            continue
        images = _listing(folder / "images", IMAGE_SUFFIXES, root, errors)
        if len(images) != 1:
            errors.append(
                f"{folder / 'images'}: must hold exactly one image, but holds {len(images)}."
            )
            continue
        if not (folder / "masks").is_dir():
            errors.append(f"{folder}: image has no masks/ folder.")
            continue
        masks = _listing(folder / "masks", MASK_SUFFIXES, root, errors)
        (image,) = images.values()
        samples.append(Sample(folder.name, image, tuple(masks[k] for k in sorted(masks))))
    return samples


def raise_if(errors: list[str], root: Path) -> None:
    if not errors:
        return
    shown = errors[:MAX_ERRORS_SHOWN]
    more = len(errors) - len(shown)
    lines = [f"{root}: {len(errors)} problem(s) in the dataset:", *(f"  {e}" for e in shown)]
    if more:
        lines.append(f"  ... and {more} more")
    raise DataError("\n".join(lines) if len(errors) > 1 else errors[0])


def scan_dataset(root: Path) -> DatasetIndex:
    """Detect the layout of ``root`` and list its samples; raises DataError on any problem."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data directory does not exist.")
    if not root.is_dir():
        raise DataError(f"{root}: must be a directory of images and masks, but is a file.")
    errors: list[str] = []
    if (root / "images").is_dir() and (root / "masks").is_dir():
        layout, samples = "images_masks", _scan_images_masks(root, errors)
    else:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not any((p / "images").is_dir() for p in folders):
            what = "is empty" if not any(root.iterdir()) else "has no known dataset layout"
            raise DataError(
                f"{root}: {what}; expected images/ and masks/ folders with matching file "
                "names, or one folder per image holding images/<id>.png and masks/*.png "
                "(the 2018 Data Science Bowl layout)."
            )
        layout, samples = "dsb2018", _scan_dsb(root, folders, errors)
    raise_if(errors, root)
    if not samples:
        raise DataError(f"{root}: contains no image/mask pairs.")
    return DatasetIndex(root, layout, tuple(samples))
