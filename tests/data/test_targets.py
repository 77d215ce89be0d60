"""Instance targets made from instance labels (unet_search/data/targets.py)."""

from __future__ import annotations

import numpy as np
import pytest

from unet_search.core.config import RunConfig
from unet_search.core.errors import ConfigError
from unet_search.data.dataset import DatasetArrays
from unet_search.data.targets import BOUNDARY, INTERIOR, boundary_map, target_arrays


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
