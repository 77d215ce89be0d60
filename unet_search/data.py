"""Dataset scanning, validation, decoding, caching, fingerprinting and splitting.

Two layouts are read (REFERENCE.md section 2):

* ``dsb2018``: ``ROOT/<id>/images/<id>.png`` and ``ROOT/<id>/masks/*.png`` (one binary mask per
  instance; the semantic mask is their union);
* ``images_masks``: ``ROOT/images/<stem>.<ext>`` and ``ROOT/masks/<stem>.<ext>``.

Everything is validated before any training starts; every broken file is reported in one
:class:`DataError`. Decoded arrays, each image at its own size, are cached under
``<cache_dir>/<fingerprint>.npz``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage

from unet_search.config import DataConfig, UserError

__all__ = [
    "CACHE_VERSION",
    "EIGHT_CONNECTED",
    "DataError",
    "DatasetArrays",
    "DatasetIndex",
    "Sample",
    "Split",
    "decode_image",
    "load_dataset",
    "materialize",
    "read_image",
    "scan_dataset",
    "split_indices",
    "split_names",
    "test_fraction_of",
]

# 2: images at their own sizes (1 held them resized to one square); 3: the images/masks
# layout's truth instances are 8-connected components, as predicted instances are
CACHE_VERSION = 3
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # instances: touching diagonally is touching
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".tif", ".tiff")
MAX_ERRORS_SHOWN = 20
log = logging.getLogger(__name__)
# The held-out test split when `data.test_fraction` is not set: 10% of a dataset of at least
# 20 images (2 test images at the least), none of a smaller one.
DEFAULT_TEST_FRACTION, MIN_IMAGES_FOR_TEST = 0.1, 20
# Bounded memory: refuse to decode a single image larger than this many pixels.
MAX_PIXELS = 16384 * 16384


class DataError(UserError):
    """The dataset breaks a rule; the message names the file(s) and the rule."""


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


@dataclass(frozen=True)
class DatasetArrays:
    """Decoded arrays shared by every trial, each image at its own size (never resized).

    The pixels of all images lie one after another in flat arrays, one buffer each, so the
    object store, the cache and every trial share them without copies: image ``i`` is
    ``pixels[offsets[i]:offsets[i + 1]]`` shaped ``(*sizes[i], 3)``.

    pixels: (P, 3) uint8; mask_pixels: (P,) uint8 class indices (0/1 when binary);
    instance_pixels: (P,) uint16 instance labels (binary datasets only, else None);
    sizes: (N, 2) int64 (height, width) of each image.
    """

    pixels: np.ndarray
    mask_pixels: np.ndarray
    instance_pixels: np.ndarray | None
    names: tuple[str, ...]
    sizes: np.ndarray
    fingerprint: str
    layout: str
    stats: dict[str, Any]

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def of(
        cls,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        instances: Sequence[np.ndarray] | None = None,
        names: Sequence[str] | None = None,
        **meta: Any,
    ) -> DatasetArrays:
        """Arrays of (H, W, 3) uint8 images, (H, W) uint8 masks and optional (H, W) uint16
        instance labels; ``meta`` sets ``fingerprint``, ``layout`` and ``stats``."""
        sizes = np.array([image.shape[:2] for image in images], np.int64).reshape(-1, 2)
        return cls(
            np.concatenate([np.asarray(i, np.uint8).reshape(-1, 3) for i in images]),
            np.concatenate([np.asarray(m, np.uint8).ravel() for m in masks]),
            None
            if instances is None
            else np.concatenate([np.asarray(i, np.uint16).ravel() for i in instances]),
            tuple(names) if names is not None else tuple(f"image{i}" for i in range(len(images))),
            sizes,
            meta.get("fingerprint", ""),
            meta.get("layout", "images_masks"),
            meta.get("stats", {}),
        )

    @functools.cached_property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sizes[:, 0] * self.sizes[:, 1])])

    def _view(self, flat: np.ndarray, i: int) -> np.ndarray:
        h, w = (int(v) for v in self.sizes[i])
        return flat[self.offsets[i] : self.offsets[i + 1]].reshape(h, w, *flat.shape[1:])

    def image(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8 view of image ``i``."""
        return self._view(self.pixels, i)

    def mask(self, i: int) -> np.ndarray:
        """(H, W) uint8 class indices of image ``i``."""
        return self._view(self.mask_pixels, i)

    def instances(self, i: int) -> np.ndarray | None:
        """(H, W) uint16 instance labels of image ``i`` (binary datasets), else None."""
        return None if self.instance_pixels is None else self._view(self.instance_pixels, i)


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


def _raise_if(errors: list[str], root: Path) -> None:
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
    _raise_if(errors, root)
    if not samples:
        raise DataError(f"{root}: contains no image/mask pairs.")
    return DatasetIndex(root, layout, tuple(samples))


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if not data:
        raise DataError(f"{path}: file is empty (0 bytes).")
    return data


def _decode_raw(path: Path, data: bytes) -> np.ndarray:
    """Bytes -> array in the file's own dtype and channels."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                page = tif.pages[0]
                if int(np.prod(page.shape[:2])) > MAX_PIXELS:
                    raise DataError(
                        f"{path}: image of {page.shape[0]}x{page.shape[1]} pixels "
                        f"exceeds the limit of {MAX_PIXELS} pixels."
                    )
                return np.asarray(page.asarray())
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise DataError(
                    f"{path}: image of {img.height}x{img.width} pixels exceeds "
                    f"the limit of {MAX_PIXELS} pixels."
                )
            img.load()
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("RGB")
        elif img.mode == "LA":
            img = img.convert("L")
        return np.asarray(img)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{path}: image exceeds the pixel limit ({MAX_PIXELS}).") from None
    except Exception as err:  # any decoder failure is a bad file, reported by name
        raise DataError(
            f"{path}: cannot be decoded as an image ({type(err).__name__}: {err})."
        ) from None


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale to 0..255 by the dtype's range (16-bit: /257), floats by [0, 1] or their max."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16 or (arr.dtype.kind in "iu" and arr.max(initial=0) > 255):
        return np.round(np.clip(arr, 0, 65535).astype(np.float32) / 257.0).astype(np.uint8)
    if arr.dtype.kind in "iu":
        return np.clip(arr, 0, 255).astype(np.uint8)
    arr = np.nan_to_num(arr.astype(np.float32))
    peak = float(arr.max(initial=0.0))
    scale = 255.0 if peak <= 1.0 else 255.0 / peak
    return np.round(np.clip(arr, 0, None) * scale).astype(np.uint8)


def decode_image(path: Path, data: bytes) -> np.ndarray:
    """Image bytes -> (H, W, 3) uint8: RGBA drops alpha, gray becomes 3 channels."""
    arr = _decode_raw(path, data)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # channel-first TIFF
    if arr.ndim == 3 and arr.shape[2] in (1, 2):
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise DataError(f"{path}: image must be 2-D gray, RGB or RGBA, but has shape {arr.shape}.")
    return np.ascontiguousarray(_to_uint8(arr[..., :3]))


def read_image(path: Path) -> np.ndarray:
    """Read one image file as (H, W, 3) uint8."""
    return decode_image(Path(path), _read_bytes(Path(path)))


def _decode_mask(path: Path, data: bytes) -> np.ndarray:
    arr = _decode_raw(path, data)
    if arr.ndim == 3:
        if not all(
            np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, min(3, arr.shape[2]))
        ):
            raise DataError(
                f"{path}: mask must have one channel (or equal channels), but its "
                "color channels differ."
            )
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DataError(f"{path}: mask must be a 2-D image, but has shape {arr.shape}.")
    if arr.dtype.kind == "f":
        if not np.all(arr == np.round(arr)):
            raise DataError(f"{path}: mask must hold integer values, but holds fractions.")
        arr = arr.astype(np.int64)
    return arr.astype(np.int64) if arr.dtype == bool else arr


def _class_mask(path: Path, raw: np.ndarray, num_classes: int) -> np.ndarray:
    """Raw mask values -> class indices (uint8); binary masks may be 0/1, 0/255 or 0/65535."""
    values = np.unique(raw)
    nonzero = values[values != 0]
    binary_ok = len(nonzero) <= 1 and all(v in (1, 255, 65535) for v in nonzero.tolist())
    if num_classes <= 2 and binary_ok:
        return (raw > 0).astype(np.uint8)
    if num_classes >= 2 and values.min() >= 0 and values.max() < num_classes:
        return raw.astype(np.uint8)
    shown = values[:10].tolist()
    rule = "binary (0/1 or 0/255)" if num_classes == 1 else f"class indices 0..{num_classes - 1}"
    raise DataError(
        f"{path}: mask values must be {rule} for num_classes={num_classes}, but "
        f"found {shown}{' ...' if len(values) > 10 else ''}."
    )


def _decode_sample(
    sample: Sample, num_classes: int, dsb: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One sample -> (image (H,W,3) uint8, class mask (H,W) uint8, instance labels or None)."""
    image = decode_image(sample.image, _read_bytes(sample.image))
    shape = image.shape[:2]
    semantic = np.zeros(shape, np.uint8)
    labels = np.zeros(shape, np.uint16) if dsb else None
    for k, path in enumerate(sample.masks, start=1):
        raw = _decode_mask(path, _read_bytes(path))
        if raw.shape != shape:
            raise DataError(
                f"{path}: mask is {raw.shape[0]}x{raw.shape[1]} but its image "
                f"{sample.image.name} is {shape[0]}x{shape[1]}; they must match."
            )
        mask = _class_mask(path, raw, 1 if dsb else num_classes)
        if dsb:
            assert labels is not None
            semantic |= mask
            labels[mask > 0] = min(k, 65535)
        else:
            semantic = mask
    return image, semantic, labels


def content_hash(index: DatasetIndex) -> str:
    """SHA-256 over the relative file list and every file's bytes."""
    digest = hashlib.sha256(index.layout.encode())
    for path in index.files():
        digest.update(str(path.relative_to(index.root)).encode("utf-8", "surrogateescape"))
        digest.update(b"\0")
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def data_id(content: str, cfg: DataConfig) -> str:
    """The data alone (16 hex): its files' contents, its classes and how it is decoded."""
    key = f"{content}|classes={cfg.num_classes}|v{CACHE_VERSION}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def fingerprint(data: str, split: str) -> str:
    """Dataset identity as validated and tested on: the data (:func:`data_id`) and the split
    (:func:`split_text`; 16 hex). Images are kept at their own sizes and every run is scored
    on the whole images at their original sizes, so the input mode, patch size, scale or
    resize square of a run does not change the data it is scored on."""
    return hashlib.sha256(f"{data}|{split}".encode()).hexdigest()[:16]


def split_text(cfg: DataConfig, n: int) -> str:
    """The split as one line (``val=0.2 test=0.1 seed=0``): how versions record it."""
    return f"val={cfg.val_fraction} test={test_fraction_of(n, cfg)} seed={cfg.split_seed}"


def test_fraction_of(n: int, cfg: DataConfig) -> float:
    """``data.test_fraction``, or when it is not set 0.1 for a dataset of at least 20
    images and 0 for a smaller one."""
    if cfg.test_fraction is not None:
        return cfg.test_fraction
    return DEFAULT_TEST_FRACTION if n >= MIN_IMAGES_FOR_TEST else 0.0


class Split(NamedTuple):
    """Sorted image indices of the three disjoint parts of a dataset."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_indices(n: int, cfg: DataConfig) -> Split:
    """The seeded (train, val, test) split of ``n`` images; train and val never empty (else
    DataError). The test images depend on the seed and ``test_fraction`` only, not on
    ``val_fraction``: a plan, which never reads them, is the same whatever the validation
    split."""
    test_fraction = test_fraction_of(n, cfg)
    n_val = max(1, round(n * cfg.val_fraction))
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        test = f" and test_fraction={test_fraction}" if n_test else ""
        one = " and one test image" if n_test else ""
        raise DataError(
            f"{n} image(s) are too few for val_fraction={cfg.val_fraction}{test}: need at "
            f"least one training and one validation image{one}."
        )
    order = np.random.default_rng(cfg.split_seed).permutation(n)
    return Split(
        np.sort(order[n_test + n_val :]),
        np.sort(order[n_test : n_test + n_val]),
        np.sort(order[:n_test]),
    )


def split_names(names: Sequence[str], cfg: DataConfig) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}``: the image ids (the DSB2018 folder
    name, or the file stem) of each part, as a search's ``split.json`` holds them."""
    split = split_indices(len(names), cfg)
    return {part: [names[int(i)] for i in split[k]] for k, part in enumerate(Split._fields)}


def _labels(mask: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """Instance labels: the DSB2018 layout's own (touching nuclei stay apart), else the mask's
    8-connected components (the rule predicted instances follow, unet_search.metrics)."""
    if labels is not None:
        return labels
    return ndimage.label(mask > 0, structure=EIGHT_CONNECTED)[0].astype(np.uint16)


def _decode_all(
    index: DatasetIndex, cfg: DataConfig, fp: str, identity: dict[str, str]
) -> DatasetArrays:
    n, dsb = len(index.samples), index.layout == "dsb2018"
    decoded: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = [None] * n
    errors: list[str] = []

    def work(i: int) -> None:
        image, mask, labels = _decode_sample(index.samples[i], cfg.num_classes, dsb)
        decoded[i] = (image, mask, _labels(mask, labels))

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for future in [pool.submit(work, i) for i in range(n)]:
            try:
                future.result()
            except DataError as err:
                errors.append(str(err))
    _raise_if(errors, index.root)
    samples = [d for d in decoded if d is not None]
    sizes = np.array([image.shape[:2] for image, _, _ in samples], np.int64).reshape(n, 2)
    masks = np.concatenate([mask.ravel() for _, mask, _ in samples])
    size_counts = Counter(f"{h}x{w}" for h, w in sizes.tolist())
    stats = {
        "count": n,
        "layout": index.layout,
        "sizes": dict(size_counts.most_common()),
        "min_size": [int(sizes[:, 0].min()), int(sizes[:, 1].min())],
        "max_size": [int(sizes[:, 0].max()), int(sizes[:, 1].max())],
        "foreground_ratio": float((masks > 0).mean()),
        "instances_per_image": float(np.mean([labels.max() for _, _, labels in samples]))
        if dsb
        else None,
        "class_pixels": np.bincount(masks, minlength=max(2, cfg.num_classes)).tolist(),
        **identity,  # data_id and split: what the registry compares apart
    }
    return DatasetArrays.of(
        [image for image, _, _ in samples],
        [mask for _, mask, _ in samples],
        [labels for _, _, labels in samples] if cfg.num_classes <= 2 else None,
        [s.name for s in index.samples],
        fingerprint=fp,
        layout=index.layout,
        stats=stats,
    )


def _save_cache(path: Path, arrays: DatasetArrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    extra: dict[str, Any] = (
        {} if arrays.instance_pixels is None else {"instance_pixels": arrays.instance_pixels}
    )
    np.savez(
        tmp,
        pixels=arrays.pixels,
        mask_pixels=arrays.mask_pixels,
        sizes=arrays.sizes,
        names=np.array(arrays.names),
        meta=np.array(
            json.dumps(
                {"fingerprint": arrays.fingerprint, "layout": arrays.layout, "stats": arrays.stats}
            )
        ),
        **extra,
    )
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old state or the whole file


def _load_cache(path: Path) -> DatasetArrays | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            return DatasetArrays(
                npz["pixels"],
                npz["mask_pixels"],
                npz.get("instance_pixels", None),
                tuple(str(s) for s in npz["names"]),
                npz["sizes"],
                meta["fingerprint"],
                meta["layout"],
                meta["stats"],
            )
    except (OSError, KeyError, ValueError):
        return None  # unreadable cache: decode again and overwrite it


def load_dataset(root: Path, cfg: DataConfig, cache_dir: Path | None = None) -> DatasetArrays:
    """Scan, validate and decode a dataset once; later calls read the cache.

    Raises DataError (naming the files) before anything is written when the data is bad,
    including too few images for ``cfg.val_fraction``.
    """
    index = scan_dataset(root)
    if index.layout == "dsb2018" and cfg.num_classes > 2:
        raise DataError(
            f"{root}: the DSB2018 layout holds binary instance masks, so "
            f"num_classes must be 1 or 2, but got {cfg.num_classes}."
        )
    n = len(index.samples)
    split_indices(n, cfg)
    if cfg.test_fraction is None and n < MIN_IMAGES_FOR_TEST:
        log.warning(
            "warning: %s: %d images are fewer than %d, so none is held out for a test; "
            "set data.test_fraction to hold some out",
            root,
            n,
            MIN_IMAGES_FOR_TEST,
        )
    identity = {"data_id": data_id(content_hash(index), cfg), "split": split_text(cfg, n)}
    fp = fingerprint(identity["data_id"], identity["split"])
    cache = cache_dir / f"{fp}.npz" if cache_dir is not None else None
    if cache is not None and cache.exists():
        cached = _load_cache(cache)
        if cached is not None and cached.fingerprint == fp:
            return cached
    arrays = _decode_all(index, cfg, fp, identity)
    if cache is not None:
        _save_cache(cache, arrays)
    return arrays


def materialize(data: str | Path, cache_dir: Path) -> Path:
    """A dataset given as a path, or as an object-store URI (``s3://``, ``gs://``,
    ``file://``; anything ``pyarrow.fs`` reads), as a local folder. URIs are copied (again,
    so that a changed bucket is seen) to ``<cache_dir>/remote/<hash of the URI>``."""
    text = str(data)
    if "://" not in text:
        return Path(text).expanduser().resolve()
    import pyarrow.fs as pafs

    dest = cache_dir / "remote" / hashlib.sha256(text.encode()).hexdigest()[:16]
    try:
        fs, path = pafs.FileSystem.from_uri(text)
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            raise DataError(f"{text}: is not a folder of images and masks.")
        dest.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(text, str(dest), destination_filesystem=pafs.LocalFileSystem())
    except DataError:
        raise
    except (OSError, ValueError) as err:  # bad scheme, no credentials, no such bucket
        raise DataError(f"{text}: cannot be read ({err}).") from None
    return dest
