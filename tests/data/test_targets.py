"""Instance targets made from instance labels (unet_search/data/targets.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unet_search.core.config import RunConfig
from unet_search.core.errors import ConfigError
from unet_search.data.dataset import DatasetArrays
from unet_search.data.targets import (
    BOUNDARY,
    INTERIOR,
    border_weights,
    boundary_map,
    class_weights,
    distance_map,
    target_arrays,
)


def _two_touching_squares() -> np.ndarray:
    """Two 4 x 4 objects side by side (columns 1-4 and 5-8) in a 6 x 10 image."""
    labels = np.zeros((6, 10), np.int32)
    labels[1:5, 1:5] = 1
    labels[1:5, 5:9] = 2
    return labels


def test_the_boundary_target_parts_touching_objects_by_their_own_class() -> None:
    """Each object's pixels with another label among their 8 neighbours are boundary (2):
    the touching columns 4 and 5 are both boundary, so the interiors (1) of the two objects
    are apart; the image's edge is no boundary."""
    out = boundary_map(_two_touching_squares())
    expected = np.zeros((6, 10), np.uint8)
    expected[1:5, 1:9] = BOUNDARY
    expected[2:4, 2:4] = INTERIOR
    expected[2:4, 6:8] = INTERIOR
    np.testing.assert_array_equal(out, expected)
    edge = np.ones((4, 4), np.int32)  # one object filling the image: all interior
    np.testing.assert_array_equal(boundary_map(edge), np.full((4, 4), INTERIOR, np.uint8))


def test_the_distance_target_is_each_objects_distance_to_its_edge_in_levels() -> None:
    """Two touching 7 x 7 squares: level k where the distance to another label (the other
    square or the background) over the square's largest (4 px, at its centre) is in
    ((k - 1) / 4, k / 4]: rings 1, 2, 3 and the centre 4, the touching columns each 1."""
    labels = np.zeros((9, 16), np.int32)
    labels[1:8, 1:8], labels[1:8, 8:15] = 1, 2
    ring = np.array(
        [[min(r, c, 6 - r, 6 - c) + 1 for c in range(7)] for r in range(7)], np.uint8
    )  # the distance to the square's edge: 1 on its outer pixels .. 4 at its centre
    expected = np.zeros((9, 16), np.uint8)
    expected[1:8, 1:8] = expected[1:8, 8:15] = ring
    np.testing.assert_array_equal(distance_map(labels), expected)
    assert RunConfig.from_dict({"target": "distance"}).data.network_classes == 5


def test_target_arrays_replace_only_the_masks() -> None:
    labels = _two_touching_squares()
    image = np.zeros((6, 10, 3), np.uint8)
    arrays = DatasetArrays.of([image, image], [labels > 0] * 2, [labels, labels])
    assert target_arrays(arrays, "semantic") is arrays
    boundary = target_arrays(arrays, "boundary")
    np.testing.assert_array_equal(boundary.mask(1), boundary_map(labels))
    np.testing.assert_array_equal(boundary.image(1), arrays.image(1))
    np.testing.assert_array_equal(boundary.instances(0), labels)
    assert set(np.unique(arrays.mask(0))) == {0, 1}  # the task's masks are untouched


def test_an_instance_target_on_a_multi_class_task_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"target": "boundary", "num_classes": 3})
    assert "data.target" in str(err.value) and "num_classes is 3" in str(err.value)
    assert RunConfig.from_dict({"target": "boundary"}).data.network_classes == 3
    assert RunConfig.from_dict({"num_classes": 3}).data.network_classes == 3
    assert RunConfig().data.network_classes == 1


def _term(d1: float, d2: float, w0: float = 10.0, sigma: float = 5.0) -> float:
    """The original UNet's border term, by hand: w0 exp(-(d1 + d2)^2 / (2 sigma^2))."""
    return w0 * math.exp(-((d1 + d2) ** 2) / (2 * sigma**2))


def test_the_border_weight_map_of_two_objects_is_the_papers_formula() -> None:
    """Ronneberger et al. 2015's w0 exp(-(d1 + d2)^2 / (2 sigma^2)), d1 and d2 the distances
    to the nearest and the second-nearest object (0 inside one), computed by hand: two
    one-pixel objects in a row at columns 2 and 6, and two squares 2 px apart."""
    row = np.zeros((1, 12), np.int32)
    row[0, 2], row[0, 6] = 1, 2
    expected = [_term(abs(x - 2), abs(x - 6)) for x in range(12)]
    np.testing.assert_allclose(border_weights(row, 10.0, 5.0)[0], expected, rtol=1e-5)
    # At 3 and 5 the term is the same as between them: d1 + d2 = 4 anywhere from 2 to 6.
    assert expected[2] == expected[4] == pytest.approx(_term(0, 4))

    squares = np.zeros((12, 14), np.int32)
    squares[3:9, 2:6], squares[3:9, 8:12] = 1, 2  # columns 6 and 7 between them
    weights = border_weights(squares, 10.0, 5.0)
    assert weights[5, 6] == pytest.approx(_term(1, 2), rel=1e-5)  # in the gap: 8.35
    assert weights[5, 5] == pytest.approx(_term(0, 3), rel=1e-5)  # the edge of object 1
    assert weights[5, 2] == pytest.approx(_term(0, 6), rel=1e-5)  # the far side of it
    assert weights[0, 7] == pytest.approx(_term(math.hypot(3, 1), math.hypot(3, 2)), rel=1e-5)
    # An object alone has no second-nearest within reach: nothing to weigh around it.
    alone = np.zeros((40, 40), np.int32)
    alone[10:14, 10:14] = 1
    assert border_weights(alone, 10.0, 5.0).max() < 1e-3


def test_class_weights_balance_the_pixels_the_original_unets_w_c() -> None:
    """1 / (classes present * share): each class weighs the same in all; clipped at 10."""
    mask = np.zeros((4, 5), np.uint8)
    mask[0, :4] = 1  # 4 of 20 pixels
    np.testing.assert_allclose(class_weights([mask], 2), [1 / (2 * 0.8), 1 / (2 * 0.2)])
    np.testing.assert_allclose(class_weights([mask, mask], 3), [0.625, 2.5, 1.0])  # 2 absent
    rare = np.zeros((100, 100), np.uint8)
    rare[0, 0] = 1
    assert class_weights([rare], 2)[1] == 10.0


def test_border_weight_is_a_config_error_without_cross_entropy_or_instances() -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"border_weight": 10, "loss": "dice"})
    assert "loss.border_weight" in str(err.value) and "loss is 'dice'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"border_weight": 10, "num_classes": 3})
    assert "loss.border_weight" in str(err.value) and "num_classes is 3" in str(err.value)
    assert RunConfig.from_dict({"border_weight": 10, "loss": "bce"}).loss.border_weight == 10
