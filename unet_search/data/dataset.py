"""A dataset's decoded arrays: scanned, validated and decoded once, cached, fingerprinted.

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
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from unet_search.core.errors import DataError
from unet_search.core.sections import DataConfig
from unet_search.data.decode import IMAGE_DTYPES, decode_sample, instance_labels
from unet_search.data.scan import DatasetIndex, raise_if, scan_dataset
from unet_search.data.split import MIN_IMAGES_FOR_TEST, split_indices, split_text
from unet_search.data.stats import as_channels

__all__ = [
    "CACHE_VERSION",
    "log",
    "DatasetArrays",
    "DataSummary",
    "content_hash",
    "data_id",
    "fingerprint",
    "load_dataset",
    "materialize",
]


# 2: images at their own sizes (1 held them resized to one square); 3: the images/masks
# layout's truth instances are 8-connected components, as predicted instances are; 4: images
# in their own values (16-bit, float) and channels (grey: one)
CACHE_VERSION = 4


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSummary:
    """What ``check-data`` prints and the registry compares: counts, sizes, foreground and
    classes, and the data's identity (``data_id``: the files and how they are read;
    ``split``: the split of its images). Kept in the cache as a plain dict."""

    count: int = 0
    layout: str = "images_masks"
    sizes: tuple[tuple[str, int], ...] = ()  # ("HxW", images), most common first
    min_size: tuple[int, int] = (0, 0)
    max_size: tuple[int, int] = (0, 0)
    foreground_ratio: float = 0.0
    instances_per_image: float | None = None  # instance truth only (DSB2018, label images)
    class_pixels: tuple[int, ...] = ()
    pixels: str = "uint8, 3 channels"  # the images' type and channels as stored
    values: tuple[float, float] = (0.0, 255.0)  # the smallest and largest image value
    data_id: str = ""
    split: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sizes": dict(self.sizes)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DataSummary:
        return cls(
            **{
                **raw,
                "sizes": tuple((str(k), int(v)) for k, v in raw.get("sizes", {}).items()),
                "min_size": tuple(raw.get("min_size", (0, 0))),
                "max_size": tuple(raw.get("max_size", (0, 0))),
                "class_pixels": tuple(raw.get("class_pixels", ())),
                "values": tuple(raw.get("values", (0.0, 255.0))),
            }
        )


@dataclass(frozen=True)
class DatasetArrays:
    """Decoded arrays shared by every trial, each image at its own size (never resized).

    The pixels of all images lie one after another in flat arrays, one buffer each, so the
    object store, the cache and every trial share them without copies: image ``i`` is
    ``pixels[offsets[i]:offsets[i + 1]]`` shaped ``(*sizes[i], C)``.

    pixels: (P, C) in the images' own values: uint8, uint16 or float32 (the widest of the
    images', none rescaled), C = 1 when every image is grey, else 3 (grey ones repeated);
    mask_pixels: (P,) uint8 class indices (0/1 when binary);
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
    summary: DataSummary

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
        """Arrays of (H, W[, C]) images (their own values: see ``pixels``), (H, W) uint8
        masks and optional (H, W) uint16 instance labels; ``meta`` sets ``fingerprint``,
        ``layout`` and ``summary``."""
        sizes = np.array([image.shape[:2] for image in images], np.int64).reshape(-1, 2)
        images = [i if i.ndim == 3 else i[..., None] for i in map(np.asarray, images)]
        channels = max((i.shape[2] for i in images), default=3)
        kinds = [i.dtype if i.dtype in IMAGE_DTYPES else np.dtype(np.uint8) for i in images]
        dtype = max(kinds, key=IMAGE_DTYPES.index, default=np.dtype(np.uint8))
        return cls(
            np.concatenate(
                [
                    as_channels(i, channels).astype(dtype, copy=False).reshape(-1, channels)
                    for i in images
                ]
            ),
            np.concatenate([np.asarray(m, np.uint8).ravel() for m in masks]),
            None
            if instances is None
            else np.concatenate([np.asarray(i, np.uint16).ravel() for i in instances]),
            tuple(names) if names is not None else tuple(f"image{i}" for i in range(len(images))),
            sizes,
            meta.get("fingerprint", ""),
            meta.get("layout", "images_masks"),
            meta.get("summary", DataSummary()),
        )

    @functools.cached_property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sizes[:, 0] * self.sizes[:, 1])])

    def _view(self, flat: np.ndarray, i: int) -> np.ndarray:
        h, w = (int(v) for v in self.sizes[i])
        return flat[self.offsets[i] : self.offsets[i + 1]].reshape(h, w, *flat.shape[1:])

    def image(self, i: int) -> np.ndarray:
        """(H, W, C) view of image ``i`` in its own values (``pixels``)."""
        return self._view(self.pixels, i)

    def mask(self, i: int) -> np.ndarray:
        """(H, W) uint8 class indices of image ``i``."""
        return self._view(self.mask_pixels, i)

    def instances(self, i: int) -> np.ndarray | None:
        """(H, W) uint16 instance labels of image ``i`` (binary datasets), else None."""
        return None if self.instance_pixels is None else self._view(self.instance_pixels, i)


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
    masks = "|masks=instances" if cfg.masks == "instances" else ""  # other instances
    key = f"{content}|classes={cfg.num_classes}{masks}|v{CACHE_VERSION}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def fingerprint(data: str, split: str) -> str:
    """Dataset identity as validated and tested on: the data (:func:`data_id`) and the split
    (:func:`split_text`; 16 hex). Images are kept at their own sizes and every run is scored
    on the whole images at their original sizes, so the input mode, patch size, scale or
    resize square of a run does not change the data it is scored on."""
    return hashlib.sha256(f"{data}|{split}".encode()).hexdigest()[:16]


def _decode_all(
    index: DatasetIndex, cfg: DataConfig, fp: str, identity: dict[str, str]
) -> DatasetArrays:
    n, dsb = len(index.samples), index.layout == "dsb2018"
    decoded: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = [None] * n
    errors: list[str] = []

    def work(i: int) -> None:
        image, mask, labels = decode_sample(
            index.samples[i], cfg.num_classes, dsb, cfg.masks == "instances"
        )
        decoded[i] = (image, mask, instance_labels(mask, labels))

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for future in [pool.submit(work, i) for i in range(n)]:
            try:
                future.result()
            except DataError as err:
                errors.append(str(err))
    raise_if(errors, index.root)
    samples = [d for d in decoded if d is not None]
    arrays = DatasetArrays.of(
        [image for image, _, _ in samples],
        [mask for _, mask, _ in samples],
        [labels for _, _, labels in samples] if cfg.num_classes <= 2 else None,
        [s.name for s in index.samples],
    )
    sizes = np.array([image.shape[:2] for image, _, _ in samples], np.int64).reshape(n, 2)
    masks = np.concatenate([mask.ravel() for _, mask, _ in samples])
    size_counts = Counter(f"{h}x{w}" for h, w in sizes.tolist())
    summary = DataSummary(
        count=n,
        layout=index.layout,
        sizes=tuple(size_counts.most_common()),
        min_size=(int(sizes[:, 0].min()), int(sizes[:, 1].min())),
        max_size=(int(sizes[:, 0].max()), int(sizes[:, 1].max())),
        foreground_ratio=float((masks > 0).mean()),
        instances_per_image=float(np.mean([labels.max() for _, _, labels in samples]))
        if dsb or cfg.masks == "instances"
        else None,
        class_pixels=tuple(np.bincount(masks, minlength=max(2, cfg.num_classes)).tolist()),
        pixels=f"{arrays.pixels.dtype.name}, {arrays.pixels.shape[1]} channel"
        + ("s" if arrays.pixels.shape[1] > 1 else ""),
        values=(float(arrays.pixels.min(initial=0)), float(arrays.pixels.max(initial=0))),
        **identity,  # data_id and split: what the registry compares apart
    )
    return replace(arrays, fingerprint=fp, layout=index.layout, summary=summary)


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
                {
                    "fingerprint": arrays.fingerprint,
                    "layout": arrays.layout,
                    "stats": arrays.summary.to_dict(),  # the key caches have always had
                }
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
                DataSummary.from_dict(meta["stats"]),
            )
    except (OSError, KeyError, ValueError, TypeError):
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
