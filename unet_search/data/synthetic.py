"""A nuclei-like synthetic dataset in the 2018 Data Science Bowl layout (for demos and tests).

Each image holds many blobs of varied size, shape, intensity and texture, some touching or
overlapping, on an uneven background with bright debris that is not a nucleus, then blur and
noise. A quarter of the images are "brightfield-like" (dark nuclei on a bright background).
A global threshold therefore does not solve the task (see ``tests/test_synthetic.py``).

:func:`render_scene` draws large, non-square images with nuclei of a fixed size in pixels, in
that style or a fluorescence-like one (bright nuclei on a dark, uneven background) where a
global threshold is strong: a network must beat Otsu on both (``bench/resolution.py``).

With ``classes`` above 2 each nucleus is one of the foreground classes, told apart by its
stain as in a two-marker fluorescence image (class 1 white, class 2 green, class 3 magenta),
written in the images/masks layout with class-index masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = ["STYLES", "make_synthetic", "render_sample", "render_scene"]

# The stain (RGB factors) of each foreground class of a multi-class set: 1 white, 2 green,
# 3 magenta.
STAINS = ((1.0, 1.0, 1.0), (0.3, 1.0, 0.3), (1.0, 0.3, 1.0))


def _blob(
    rng: np.random.Generator, shape: tuple[int, int], center: tuple[float, float], radius: float
) -> np.ndarray:
    """A boolean mask of a wobbly ellipse."""
    h, w = shape
    cy, cx = center
    reach = int(np.ceil(radius * 1.6)) + 2
    y0, y1 = max(0, int(cy) - reach), min(h, int(cy) + reach + 1)
    x0, x1 = max(0, int(cx) - reach), min(w, int(cx) + reach + 1)
    mask = np.zeros(shape, bool)
    if y0 >= y1 or x0 >= x1:
        return mask
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    a, b = radius * rng.uniform(0.8, 1.3), radius * rng.uniform(0.55, 1.0)
    theta = np.arctan2(v, u)
    k, phase, amp = rng.integers(2, 6), rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.15)
    wobble = 1.0 + amp * np.sin(k * theta + phase)
    mask[y0:y1, x0:x1] = (u / a) ** 2 + (v / b) ** 2 <= wobble**2
    return mask


def _place(
    rng: np.random.Generator,
    shape: tuple[int, int],
    centers: list[tuple[float, float, float]],
    radius: float,
) -> np.ndarray | None:
    """A nucleus touching or overlapping an earlier one (35%) or anywhere; None (and nothing
    recorded) when it falls almost entirely outside the image."""
    if centers and rng.random() < 0.35:
        py, px, pr = centers[rng.integers(len(centers))]
        ang, dist = rng.uniform(0, 2 * np.pi), (pr + radius) * rng.uniform(0.6, 1.0)
        center = (py + dist * np.sin(ang), px + dist * np.cos(ang))
    else:
        center = (rng.uniform(0, shape[0]), rng.uniform(0, shape[1]))
    blob = _blob(rng, shape, center, radius)
    if blob.sum() < 6:
        return None
    centers.append((center[0], center[1], radius))
    return blob


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Labels 1..n of the nuclei left with at least 6 pixels after occlusion (0 elsewhere)."""
    kept = [k for k in np.unique(labels) if k and (labels == k).sum() >= 6]
    relabel = np.zeros(labels.max() + 1, np.int32)
    relabel[kept] = np.arange(1, len(kept) + 1)
    return relabel[labels]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / (np.abs(field).max() + 1e-6)


def render_sample(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and its instance labels.

    Returns:
        image: (H, W, 4) uint8 RGBA, like many DSB2018 images.
        labels: (H, W) int32, 0 = background, k = the k-th nucleus (no overlaps: later
        nuclei occlude earlier ones).
    """
    shape = (height, width)
    scale = min(height, width) / 128.0
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    direction = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(direction) * xx / width + np.sin(direction) * yy / height
    ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)
    background = (
        rng.uniform(0.03, 0.15)
        + rng.uniform(0.1, 0.4) * ramp
        + 0.08 * _smooth_noise(rng, shape, 12 * scale)
    )

    labels = np.zeros(shape, np.int32)
    signal = np.zeros(shape, np.float32)
    centers: list[tuple[float, float, float]] = []
    # Typical radius follows the image size with a floor of 2.5 px; the count keeps the
    # foreground coverage near 8-20% whatever the size.
    r0 = max(2.5, 6.0 * scale)
    count = int(height * width * rng.uniform(0.08, 0.2) / (np.pi * r0**2))
    for k in range(1, max(count, 3) + 1):
        radius = r0 * rng.uniform(0.55, 1.5)
        blob = _place(rng, shape, centers, radius)
        if blob is None:
            continue
        labels[blob] = k
        texture = 1.0 - 0.35 * np.clip(_smooth_noise(rng, shape, 1.5 * scale), 0, None)
        signal[blob] = rng.uniform(0.25, 0.85) * texture[blob]

    debris = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(2, 7))):  # bright fibres and specks, not nuclei
        y, x = rng.uniform(0, height), rng.uniform(0, width)
        ang, length = rng.uniform(0, np.pi), rng.uniform(10, 40) * scale
        t = np.linspace(0, 1, 200)
        ys = np.clip((y + t * length * np.sin(ang)).astype(int), 0, height - 1)
        xs = np.clip((x + t * length * np.cos(ang)).astype(int), 0, width - 1)
        debris[ys, xs] = rng.uniform(0.5, 1.0)
    debris = ndimage.gaussian_filter(debris, 0.6)

    labels = _relabel(labels)
    signal[labels == 0] = 0.0

    image = background + signal + debris
    image = ndimage.gaussian_filter(image, rng.uniform(0.5, 1.4))
    image = image + rng.normal(0, rng.uniform(0.02, 0.06), shape)
    if rng.random() < 0.25:  # brightfield-like: dark nuclei on a bright, tinted background
        image = 1.0 - image
        tint = np.array([rng.uniform(0.75, 0.95), rng.uniform(0.55, 0.8), rng.uniform(0.8, 1.0)])
    else:
        tint = np.array([1.0, 1.0, 1.0])
    rgb = np.clip(image[..., None] * tint, 0, 1)
    rgba = np.concatenate([rgb, np.ones((*shape, 1))], axis=2)
    return np.round(rgba * 255).astype(np.uint8), labels


STYLES = ("hard", "fluorescence", "epithelium")


def _epithelium(
    rng: np.random.Generator, shape: tuple[int, int], cell_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cells tiling the plane (a Voronoi tessellation of jittered grid points, about
    ``cell_px`` across), parted by bright membranes one pixel thin, as in an epithelium
    stained for its membranes; a few cells are missing (lumen: background). Returns the
    (H, W) float32 grey image in [0, 1] and (H, W) int32 labels (membranes and lumen 0)."""
    height, width = shape
    step = max(cell_px, 4.0)
    ys = np.arange(-step / 2, height + step, step)
    xs = np.arange(-step / 2, width + step, step)
    grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
    points = grid + rng.uniform(-0.35, 0.35, grid.shape) * step
    # Nearest point of every pixel: the distance transform of the seed image finds it.
    seeds = np.ones((height + 2 * int(step) + 2, width + 2 * int(step) + 2), bool)
    offset = int(step) + 1
    cells = np.round(points).astype(int) + offset
    inside = (cells >= 0).all(1) & (cells[:, 0] < seeds.shape[0]) & (cells[:, 1] < seeds.shape[1])
    cells = cells[inside]
    seeds[cells[:, 0], cells[:, 1]] = False
    ids = np.zeros(seeds.shape, np.int32)
    ids[cells[:, 0], cells[:, 1]] = np.arange(1, len(cells) + 1)
    _, (iy, ix) = ndimage.distance_transform_edt(seeds, return_indices=True)
    labels = ids[iy, ix][offset : offset + height, offset : offset + width]
    membrane = np.zeros(shape, bool)  # one pixel thin: where the right or lower cell differs
    membrane[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    membrane[:-1, :] |= labels[:-1, :] != labels[1:, :]
    lumen = np.isin(labels, rng.choice(labels.max() + 1, max(1, labels.max() // 12)))
    labels = np.where(membrane | lumen, 0, labels)
    cell = (labels > 0).astype(np.float32)
    shade = rng.uniform(0.15, 0.35, labels.max() + 1)[labels]  # each cell its own tone
    texture = 0.08 * _smooth_noise(rng, shape, max(1.0, cell_px / 6))
    image = cell * (shade + texture) + membrane * rng.uniform(0.55, 0.8) + lumen * 0.05
    image = ndimage.gaussian_filter(image, rng.uniform(0.6, 1.0))
    image = image + rng.normal(0, rng.uniform(0.02, 0.04), shape)
    return np.clip(image, 0, 1).astype(np.float32), _relabel(labels)


def render_scene(
    rng: np.random.Generator, height: int, width: int, object_px: float, style: str
) -> tuple[np.ndarray, np.ndarray]:
    """An image of nuclei about ``object_px`` pixels across, whatever the image's size.

    ``hard``: the style of :func:`render_sample` (uneven background, bright debris that is
    not a nucleus, a quarter brightfield-like), built to defeat a global threshold.
    ``fluorescence``: bright nuclei on a dark, unevenly lit background, as in fluorescence
    microscopy, where Otsu's threshold is strong.
    ``epithelium``: cells about ``object_px`` across tiling the plane, parted by bright
    membranes one pixel thin (every cell touches its neighbours: a mask's connected
    components are one blob).

    Returns (H, W, 4) uint8 RGBA and (H, W) int32 instance labels.
    """
    shape = (height, width)
    if style == "epithelium":
        grey, cells = _epithelium(rng, shape, object_px)
        rgba = np.concatenate([grey[..., None].repeat(3, axis=2), np.ones((*shape, 1))], axis=2)
        return np.round(rgba * 255).astype(np.uint8), cells
    r0 = object_px / 2.0
    texture = 1.0 - 0.35 * np.clip(_smooth_noise(rng, shape, max(1.0, r0 / 3)), 0, None)
    labels = np.zeros(shape, np.int32)
    signal = np.zeros(shape, np.float32)
    centers: list[tuple[float, float, float]] = []
    count = int(height * width * rng.uniform(0.08, 0.2) / (np.pi * r0**2))
    low, high = (0.2, 0.6) if style == "hard" else (0.2, 0.9)
    for k in range(1, max(count, 3) + 1):
        radius = r0 * rng.uniform(0.6, 1.4)
        blob = _place(rng, shape, centers, radius)
        if blob is None:
            continue
        labels[blob] = k
        signal[blob] = rng.uniform(low, high) * texture[blob]
    labels = _relabel(labels)
    signal[labels == 0] = 0.0

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    direction = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(direction) * xx / width + np.sin(direction) * yy / height
    ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)
    if style == "fluorescence":
        light = _smooth_noise(rng, shape, max(height, width) / 6)
        background = rng.uniform(0.02, 0.08) + rng.uniform(0.05, 0.2) * (ramp + 0.5 * light)
        image = background + signal * (0.7 + 0.3 * ramp)
        image = ndimage.gaussian_filter(image, rng.uniform(0.8, 1.6))
        image = image + rng.normal(0, rng.uniform(0.02, 0.05), shape)
        rgb = np.clip(image, 0, 1)[..., None].repeat(3, axis=2)
    else:
        background = (
            rng.uniform(0.03, 0.15)
            + rng.uniform(0.3, 0.6) * ramp
            + 0.1 * _smooth_noise(rng, shape, 1.5 * object_px)
        )
        debris = np.zeros(shape, np.float32)
        for _ in range(int(rng.integers(2, 7) * max(1.0, height * width / 128**2) ** 0.5)):
            y, x = rng.uniform(0, height), rng.uniform(0, width)
            ang, length = rng.uniform(0, np.pi), rng.uniform(1.0, 4.0) * object_px
            t = np.linspace(0, 1, 200)
            ys = np.clip((y + t * length * np.sin(ang)).astype(int), 0, height - 1)
            xs = np.clip((x + t * length * np.cos(ang)).astype(int), 0, width - 1)
            debris[ys, xs] = rng.uniform(0.5, 1.0)
        image = background + signal + ndimage.gaussian_filter(debris, 0.6)
        image = ndimage.gaussian_filter(image, rng.uniform(0.5, 1.4))
        image = image + rng.normal(0, rng.uniform(0.02, 0.06), shape)
        tint = np.array([1.0, 1.0, 1.0])
        if rng.random() < 0.25:  # brightfield-like: dark nuclei on a bright, tinted background
            image = 1.0 - image
            tint = np.array(
                [rng.uniform(0.75, 0.95), rng.uniform(0.55, 0.8), rng.uniform(0.8, 1.0)]
            )
        rgb = np.clip(image[..., None] * tint, 0, 1)
    rgba = np.concatenate([rgb, np.ones((*shape, 1))], axis=2)
    return np.round(rgba * 255).astype(np.uint8), labels


def _classes_of(
    rng: np.random.Generator, image: np.ndarray, labels: np.ndarray, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each instance given one of the foreground classes 1..classes-1 and stained as that
    class; returns the stained image and the (H, W) uint8 class-index mask."""
    per_instance = np.concatenate([[0], rng.integers(1, classes, int(labels.max()))])
    mask = per_instance[labels].astype(np.uint8)
    factors = np.array([(1.0, 1.0, 1.0), *STAINS], np.float32)[mask]
    rgb = np.clip(np.round(image[..., :3] * factors), 0, 255).astype(np.uint8)
    return np.concatenate([rgb, image[..., 3:]], axis=2), mask


def make_synthetic(
    out: Path,
    n: int = 200,
    size: int = 128,
    seed: int = 0,
    *,
    max_size: int | None = None,
    object_px: float | None = None,
    style: str = "hard",
    classes: int = 2,
) -> list[str]:
    """Write ``n`` synthetic samples to ``out``: binary (``classes`` 2) in the DSB2018 layout,
    one mask per instance; else in the images/masks layout with class-index masks (0 the
    background, each nucleus one of 1..classes-1, stained apart).

    By default heights are ``size``, widths vary around it (+-25%) and nuclei scale with the
    image (the original set: resizing to the model's input and back is exercised). With
    ``max_size`` each side is drawn from [size, max_size] (large, non-square images); with
    ``object_px`` nuclei are about that many pixels across whatever the image's size; with
    ``style`` (``hard`` | ``fluorescence``) see :func:`render_scene`. Returns the image ids.
    """
    if n < 1:
        raise ValueError(f"`n >= 1` must hold, but got {n=}.")
    if size < 16:
        raise ValueError(f"`size >= 16` must hold, but got {size=}.")
    if max_size is not None and max_size < size:
        raise ValueError(f"`max_size >= size` must hold, but got {max_size=} < {size=}.")
    if style not in STYLES:
        raise ValueError(f"`style` must be one of {list(STYLES)}, but got {style!r}.")
    if not 2 <= classes <= len(STAINS) + 1:
        raise ValueError(f"`classes` must be in [2, {len(STAINS) + 1}], but got {classes}.")
    legacy = max_size is None and object_px is None and style == "hard"
    out = Path(out)
    ids = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        if legacy:
            width = int(size * rng.choice([0.75, 1.0, 1.0, 1.25]))
            image, labels = render_sample(rng, size, width)
        else:
            top = max_size or size
            height, width = (int(v) for v in rng.integers(size, top + 1, 2))
            diameter = object_px or 12.0 * min(height, width) / 128.0
            image, labels = render_scene(rng, height, width, diameter, style)
        image_id = f"synth{seed:03d}_{i:05d}"
        if classes > 2:
            image, mask = _classes_of(rng, image, labels, classes)
            for part, array, mode in (("images", image, "RGBA"), ("masks", mask, "L")):
                (out / part).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array, mode).save(out / part / f"{image_id}.png")
            ids.append(image_id)
            continue
        folder = out / image_id
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "masks").mkdir(exist_ok=True)
        Image.fromarray(image, "RGBA").save(folder / "images" / f"{image_id}.png")
        for k in range(1, int(labels.max()) + 1):
            mask = ((labels == k) * 255).astype(np.uint8)
            Image.fromarray(mask, "L").save(folder / "masks" / f"{image_id}_m{k:03d}.png")
        ids.append(image_id)
    return ids
