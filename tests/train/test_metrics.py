from __future__ import annotations

import numpy as np
import pytest
import torch

from unet_search.train.metrics import (
    class_dice_sums,
    dice_iou_per_image,
    dsb_image_score,
    logits_to_labels,
    soft_dice_per_image,
)


def _square(shape: tuple[int, int], y: int, x: int, h: int, w: int, value: int = 1) -> np.ndarray:
    out = np.zeros(shape, np.int64)
    out[y : y + h, x : x + w] = value
    return out


def test_dice_iou_hand_computed_cases() -> None:
    truth = torch.from_numpy(
        np.stack(
            [
                _square((8, 8), 0, 0, 2, 2),  # perfect
                np.zeros((8, 8), np.int64),  # empty / empty
                _square((8, 8), 0, 0, 2, 2),  # disjoint
                _square((8, 8), 0, 0, 2, 2),  # pred 2x2 shifted by one column: overlap 2 px
            ]
        )
    )
    pred = torch.from_numpy(
        np.stack(
            [
                _square((8, 8), 0, 0, 2, 2),
                np.zeros((8, 8), np.int64),
                _square((8, 8), 5, 5, 2, 2),
                _square((8, 8), 0, 1, 2, 2),
            ]
        )
    )
    dice, iou = dice_iou_per_image(pred, truth, num_classes=1)
    assert dice.tolist() == pytest.approx([1.0, 1.0, 0.0, 0.5])
    assert iou.tolist() == pytest.approx([1.0, 1.0, 0.0, 1 / 3])


def test_multiclass_dice_averages_present_classes() -> None:
    truth = torch.from_numpy(_square((4, 4), 0, 0, 2, 2, 1) + _square((4, 4), 2, 2, 2, 2, 2))[None]
    pred = torch.from_numpy(_square((4, 4), 0, 0, 2, 2, 1))[None]  # class 2 missed
    dice, iou = dice_iou_per_image(pred, truth, num_classes=3)
    assert dice.item() == pytest.approx(0.5)
    assert iou.item() == pytest.approx(0.5)
    # per class (val_dice_c<k>): class 1 exact, class 2 missed; a second image where class 2
    # is nowhere leaves it unscored there, and class 1 half found (2 of 4 pixels)
    other = torch.from_numpy(_square((4, 4), 0, 0, 2, 2, 1))[None]
    half = torch.from_numpy(_square((4, 4), 0, 0, 1, 2, 1))[None]
    sums, scored = class_dice_sums(torch.cat([pred, half]), torch.cat([truth, other]), 3)
    assert sums == pytest.approx([1.0 + 2 * 2 / (2 + 4), 0.0]) and scored == [2.0, 1.0]


def test_logits_to_labels_binary_and_multiclass() -> None:
    binary = torch.tensor([[[[-1.0, 0.1], [3.0, -3.0]]]])  # sigmoid: 0.27, 0.52, 0.95, 0.05
    assert logits_to_labels(binary, 0.5).tolist() == [[[0, 1], [1, 0]]]
    assert logits_to_labels(binary, 0.9).tolist() == [[[0, 0], [1, 0]]]
    multi = torch.zeros(1, 3, 1, 2)
    multi[0, 2, 0, 0], multi[0, 1, 0, 1] = 5.0, 5.0
    assert logits_to_labels(multi).tolist() == [[[2, 1]]]


def test_dsb_perfect_empty_and_missing() -> None:
    truth = _square((16, 16), 2, 2, 4, 4) + _square((16, 16), 10, 10, 4, 4, 2)
    assert dsb_image_score(truth > 0, truth) == 1.0
    assert dsb_image_score(np.zeros((16, 16), bool), np.zeros((16, 16), np.int64)) == 1.0
    assert dsb_image_score(np.zeros((16, 16), bool), truth) == 0.0
    assert dsb_image_score(truth > 0, np.zeros((16, 16), np.int64)) == 0.0


def test_dsb_partial_overlap_counts_thresholds_below_iou() -> None:
    truth = _square((20, 20), 0, 0, 10, 10)
    pred = _square((20, 20), 0, 0, 10, 8) > 0  # IoU 0.8: a hit for t = 0.50 .. 0.75
    assert dsb_image_score(pred, truth) == pytest.approx(0.6)


def test_dsb_split_nucleus_scores_zero() -> None:
    truth = _square((8, 8), 0, 0, 4, 4)
    pred = np.zeros((8, 8), bool)
    pred[0:4, 0:2] = pred[0:4, 3:4] = True  # two pieces, IoU 0.5 and 0.25: never > 0.5
    assert dsb_image_score(pred, truth) == 0.0


def test_dsb_merged_nuclei_lose_one_match() -> None:
    # Two touching 4x4 nuclei predicted as one 4x8 blob: IoU 0.5 each, no match at all.
    truth = _square((8, 8), 0, 0, 4, 4) + _square((8, 8), 0, 4, 4, 4, 2)
    assert dsb_image_score(truth > 0, truth) == 0.0
    # One of two nuclei found exactly, the other missed: TP=1, FN=1 -> 0.5 at every t.
    assert dsb_image_score(truth == 1, truth) == pytest.approx(0.5)


def test_soft_dice_hand_computed_and_ranks_what_the_thresholded_dice_ties() -> None:
    truth = torch.from_numpy(np.stack([_square((4, 4), 0, 0, 2, 2), np.zeros((4, 4), np.int64)]))
    # Probabilities 0.25 everywhere (logit of 1/3): no pixel over 0.5, thresholded Dice 0.
    low = torch.full((2, 1, 4, 4), float(np.log(1 / 3)))
    # (2 * 4 * 0.25 + 1) / (16 * 0.25 + 4 + 1) = 3 / 9; empty truth: 1 / (4 + 1)
    assert soft_dice_per_image(low, truth).tolist() == pytest.approx([3 / 9, 1 / 5])
    # 0.4 on the object, 0.25 elsewhere: still Dice 0 when thresholded, but a higher soft Dice.
    closer = low.clone()
    closer[0, 0, :2, :2] = float(np.log(0.4 / 0.6))
    dice, _ = dice_iou_per_image(logits_to_labels(closer), truth, num_classes=1)
    assert dice[0] == 0.0
    soft = soft_dice_per_image(closer, truth)
    assert soft[0] == pytest.approx((2 * 4 * 0.4 + 1) / (4 * 0.4 + 12 * 0.25 + 4 + 1))
    assert soft[0] > 3 / 9
    # Multi-class logits: softmax, the foreground classes averaged; a sure, right answer is ~1.
    labels = torch.from_numpy(_square((4, 4), 0, 0, 2, 2) + _square((4, 4), 2, 2, 2, 2, 2))[None]
    sure = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_per_image(sure, labels).tolist() == pytest.approx([1.0])


def test_the_scorer_averages_the_dsb_score_over_every_image() -> None:
    """DSB2018's convention, for validation and the test split alike (one Scorer): the mean
    over all images; an image with empty truth and empty prediction scores 1 and counts."""
    from unet_search.train.metrics import Scorer

    truth = np.zeros((16, 16), np.int64)
    truth[2:6, 2:6] = 1
    empty = np.zeros((16, 16), np.int64)
    scorer = Scorer(1, with_dsb=True)
    as_tensor = lambda a: torch.from_numpy(a)[None]  # noqa: E731
    scorer.add(as_tensor(truth), as_tensor(truth), truth)  # found exactly: 1
    scorer.add(as_tensor(empty), as_tensor(truth), truth)  # missed: 0
    scorer.add(as_tensor(empty), as_tensor(empty), empty)  # nothing to find, nothing found: 1
    expected = {"dice": 2 / 3, "iou": 2 / 3, "dsb_score": 2 / 3, "ap50": 2 / 3}
    assert scorer.means_of() == pytest.approx(expected)
    assert scorer.sums[-1] == 3  # images
    # Ranks add their sums first: two halves give what one scorer of all gives.
    first, second = [1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0, 2.0]
    halves = [a + b for a, b in zip(first, second, strict=True)]
    assert Scorer(1, with_dsb=True).means_of(halves) == scorer.means_of()


def test_otsu_finds_the_same_objects_at_any_bit_depth() -> None:
    """8-bit images over their 256 levels; deeper ones over 256 bins of their own range (a
    12-bit image's objects are not lost in the first 16 levels of 65536)."""
    from unet_search.train.metrics import otsu_mask

    rng = np.random.default_rng(0)
    truth = np.zeros((40, 50), bool)
    truth[5:15, 5:20] = truth[25:35, 30:45] = True
    eight = np.where(truth, 160, 40).astype(np.uint8) + rng.integers(0, 30, truth.shape, np.uint8)
    twelve = eight.astype(np.uint16) * 16  # 0..4095
    floats = eight.astype(np.float32) / 255
    for image in (eight, twelve, floats, np.repeat(twelve[..., None], 3, axis=2)):
        assert np.array_equal(otsu_mask(image).astype(bool), truth), image.dtype
