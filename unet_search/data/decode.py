"""Decode one sample: the image in its own values and channels at its own size (8- and 16-bit
and float kept, grey one channel; palette and RGBA handled), its mask as class indices, its
instances as labels (the DSB2018 layout's masks, one per object, or an images/masks label
image with ``data.masks: instances``)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage

from unet_search.core.errors import DataError, without_reprs
from unet_search.data.scan import Sample

__all__ = [
    "decode_image",
    "decode_sample",
    "EIGHT_CONNECTED",
    "IMAGE_DTYPES",
    "image_array",
    "instance_labels",
    "MAX_PIXELS",
    "read_image",
]


EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # instances: touching diagonally is touching


# Bounded memory: refuse to decode a single image larger than this many pixels.
MAX_PIXELS = 16384 * 16384


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
    except Image.UnidentifiedImageError:
        raise DataError(
            f"{path}: is not an image file (no PNG, JPEG, TIFF or other format PIL reads)."
        ) from None
    except Exception as err:  # any decoder failure is a bad file, reported by name
        raise DataError(
            f"{path}: cannot be decoded as an image ({type(err).__name__}: {without_reprs(err)})."
        ) from None


IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))  # narrow first


def _native(arr: np.ndarray) -> np.ndarray:
    """The image's own values in one of :data:`IMAGE_DTYPES`, never rescaled: 8- and 16-bit
    stay as they are (a 12-bit camera's 0..4095, or 8-bit values in a 16-bit file, keep every
    level), booleans become 0/255, other integers and floats become float32 (NaN: 0)."""
    if arr.dtype in (np.uint8, np.uint16):
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    return np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def image_array(arr: np.ndarray, name: str) -> np.ndarray:
    """An (H, W) or (H, W, C) array (channel-first TIFFs turned) -> (H, W, C) in its own
    values (:func:`_native`): C = 1 for a grey image, 3 for colour (RGBA drops alpha; a
    two-channel image keeps its first, as before). ``name`` names it in the error."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # channel-first TIFF
    if arr.ndim == 3 and arr.shape[2] in (1, 2):
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise DataError(f"{name}: image must be 2-D gray, RGB or RGBA, but has shape {arr.shape}.")
    return np.ascontiguousarray(_native(arr[..., :3]))


def decode_image(path: Path, data: bytes) -> np.ndarray:
    """Image bytes -> (H, W, C) in the file's own values (:func:`image_array`)."""
    return image_array(_decode_raw(path, data), str(path))


def read_image(path: Path) -> np.ndarray:
    """Read one image file as (H, W, C) in its own values (:func:`decode_image`)."""
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
    hint = (
        "; a label image (one id per object, 0 the background) is read with --set masks=instances"
        if num_classes <= 2 and values.min() >= 0
        else ""
    )
    raise DataError(
        f"{path}: mask values must be {rule} for num_classes={num_classes}, but "
        f"found {shown}{' ...' if len(values) > 10 else ''}{hint}."
    )


def _label_image(path: Path, raw: np.ndarray) -> np.ndarray:
    """A label image's values (object ids, 0 the background) -> uint16 labels 1..K in the
    order of the ids (ids need not be consecutive)."""
    if raw.min(initial=0) < 0:
        raise DataError(
            f"{path}: a label image (data.masks: instances) holds object ids >= 0 (0 the "
            f"background), but holds {int(raw.min())}."
        )
    ids = np.unique(raw[raw > 0])
    if len(ids) > 65535:
        raise DataError(f"{path}: holds {len(ids)} objects; at most 65535 are supported.")
    labels = np.zeros(raw.shape, np.uint16)
    inside = raw > 0
    labels[inside] = np.searchsorted(ids, raw[inside]) + 1
    return labels


def decode_sample(
    sample: Sample, num_classes: int, dsb: bool, label_images: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One sample -> (image (H,W,C) in its own values, class mask (H,W) uint8, instance
    labels or None). ``dsb``: one binary mask per object; ``label_images`` (``data.masks:
    instances``): the mask file is a label image, each object its own id."""
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
        if label_images and not dsb:
            labels = _label_image(path, raw)
            semantic = (labels > 0).astype(np.uint8)
            continue
        mask = _class_mask(path, raw, 1 if dsb else num_classes)
        if dsb:
            assert labels is not None
            semantic |= mask
            labels[mask > 0] = min(k, 65535)
        else:
            semantic = mask
    return image, semantic, labels


def instance_labels(mask: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """Instance labels: the DSB2018 layout's own or a label image's (touching nuclei stay
    apart), else the mask's 8-connected components (the rule predicted instances follow,
    unet_search.train.metrics)."""
    if labels is not None:
        return labels
    return ndimage.label(mask > 0, structure=EIGHT_CONNECTED)[0].astype(np.uint16)
