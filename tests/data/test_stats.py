"""Exact pixel statistics from value counts, checked against numpy on the pixels themselves."""

from __future__ import annotations

import numpy as np
import pytest

from unet_search.data.stats import (
    PERCENTILES,
    as_channels,
    intensity,
    percentile_of_counts,
    scaled_size,
    value_range,
)


def test_the_full_scale_of_each_image_type() -> None:
    assert [value_range(t) for t in (np.uint8, np.uint16, np.float32)] == [255.0, 65535.0, 1.0]


@pytest.mark.parametrize("dtype, top", [(np.uint8, 255), (np.uint16, 4095)])
def test_statistics_from_value_counts_equal_numpys_on_the_pixels(dtype: type, top: int) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, top + 1, (37, 41, 3)).astype(dtype)  # a 12-bit camera's values
    found = intensity(image)
    pixels = image.reshape(-1, 3).astype(np.float64)
    assert np.allclose(found.mean, pixels.mean(axis=0))
    assert np.allclose(found.std, pixels.std(axis=0))
    assert np.allclose(found.low, np.percentile(pixels, PERCENTILES[0], axis=0))
    assert np.allclose(found.high, np.percentile(pixels, PERCENTILES[1], axis=0))
    grey = intensity(image, grey=True, q=(5.0, 95.0))  # the channel mean, one channel
    mean = pixels.mean(axis=1)
    assert np.allclose(grey.mean, [mean.mean()]) and np.allclose(grey.std, [mean.std()])
    assert np.allclose([grey.low[0], grey.high[0]], np.percentile(mean, [5.0, 95.0]))


def test_float_images_and_percentiles_of_counts_by_hand() -> None:
    image = np.linspace(0.0, 1.0, 101, dtype=np.float32).reshape(101, 1, 1)
    found = intensity(image, q=(10.0, 90.0))
    assert np.allclose([found.low[0], found.high[0]], [0.1, 0.9])
    # values 0, 1, 2 counted 1, 2, 1 times: the pixels 0 1 1 2
    counts, values = np.array([1, 2, 1]), np.array([0.0, 1.0, 2.0])
    assert percentile_of_counts(counts, values, 50.0) == 1.0
    assert percentile_of_counts(counts, values, 100.0) == 2.0
    assert percentile_of_counts(counts, values, 12.5) == pytest.approx(0.375)  # as numpy
    assert percentile_of_counts(np.zeros(3), values, 50.0) == 0.0


def test_channels_meet_the_model_and_sizes_scale() -> None:
    rgb = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert as_channels(rgb, 3) is rgb
    assert as_channels(rgb, 1)[..., 0].tolist() == [[1.0, 4.0], [7.0, 10.0]]
    grey = rgb[..., :1]
    assert (
        as_channels(grey, 3).shape == (2, 2, 3)
        and (as_channels(grey, 3)[..., 2] == grey[..., 0]).all()
    )
    with pytest.raises(ValueError, match="2 channels cannot feed 3"):
        as_channels(rgb[..., :2], 3)
    assert scaled_size((100, 51), 0.5) == (50, 26) and scaled_size((3, 3), 0.1) == (1, 1)
