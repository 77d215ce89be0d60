"""The planner's rules (unet_search.plan.planner) on datasets of known image and object sizes, and
`auto` in search spaces and run configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from unet_search.core.config import run_leaves
from unet_search.core.errors import ConfigError, UserError
from unet_search.core.sections import PLANNED_LEAVES
from unet_search.data.dataset import DatasetArrays
from unet_search.plan.planner import make_plan, parse_budget, plan_run, receptive_field
from unet_search.plan.profile import profile_data
from unet_search.space.load import load_space, plan_space
from unet_search.space.spec import PROVISIONAL

QUICK = parse_budget("cpu-quick")


def _discs(
    n: int,
    size: tuple[int, int],
    diameter: float,
    brightness: list[int] | None = None,
    seed: int = 0,
) -> DatasetArrays:
    """``n`` images of ``size`` holding non-touching bright discs of ``diameter`` px on a
    noisy dark background (``brightness``: each image's disc value)."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    images, masks, labels = [], [], []
    step = int(diameter * 1.6) + 2
    for k in range(n):
        label = np.zeros((h, w), np.uint16)
        count = 0
        for cy in range(step // 2, h - step // 2, step):
            for cx in range(step // 2, w - step // 2, step):
                if rng.random() < 0.5:
                    count += 1
                    label[(yy - cy) ** 2 + (xx - cx) ** 2 <= (diameter / 2) ** 2] = count
        value = 200 if brightness is None else brightness[k]
        grey = np.where(label > 0, value, 20) + rng.integers(0, 10, (h, w))
        images.append(np.repeat(grey.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2))
        masks.append((label > 0).astype(np.uint8))
        labels.append(label)
    return DatasetArrays.of(images, masks, labels)


def test_receptive_field_of_a_plain_unet() -> None:
    # two 3x3 convs per level, a 2x2 pooling between levels
    assert [receptive_field(d) for d in (2, 3, 4, 5)] == [32, 68, 140, 284]


def test_small_objects_in_large_images_keep_their_scale_and_fill_the_budget() -> None:
    stats = profile_data(_discs(4, (300, 500), 10))
    assert stats.median_size == (300, 500)
    assert stats.object_px == pytest.approx(10, abs=1.0)
    plan = make_plan(stats, QUICK)
    assert plan.scale == 1.0
    assert plan.patch_size == (96, 96)  # the cpu-quick patch
    assert (plan.depth_low, plan.depth_high, plan.depth) == (3, 4, 4)
    assert (plan.batch_size, plan.patches_per_epoch) == (8, 128)
    gpu = make_plan(stats, parse_budget("gpu-16"))
    assert gpu.patch_size == (256, 256) and gpu.depth_high == 5
    # half of 16 GiB at 4 KiB a pixel: 32 patches of 256 px; 250 steps an epoch
    assert (gpu.batch_size, gpu.patches_per_epoch) == (32, 8000)
    # 512-px patches from 40 GiB: the 300-px side is fitted to the image, rounded up
    assert make_plan(stats, parse_budget("gpu-80")).patch_size == (320, 512)


def test_a_transformer_bottleneck_keeps_its_token_limit() -> None:
    stats = profile_data(_discs(4, (300, 500), 10))
    budget = parse_budget("gpu-80")  # 320 x 512 patches
    plain = make_plan(stats, budget)
    planned = make_plan(stats, budget, {"transformer": True})
    assert plain.patch_size == planned.patch_size == (320, 512)
    assert plain.depth_low == 3 and planned.depth_low == 4  # depth 3: 40 x 64 tokens > 1024
    assert "transformer bottleneck holds <= 1024 tokens" in planned.reasons["depth"]
    shallow = make_plan(stats, budget, {"transformer": True, "depth_max": 3})
    assert shallow.patch_size == (256, 256)  # 32 x 32 tokens at depth 3
    assert (shallow.depth_low, shallow.depth_high) == (3, 3)


def test_large_objects_are_downsampled_and_need_a_deeper_net() -> None:
    stats = profile_data(_discs(3, (600, 600), 80))
    assert stats.object_px == pytest.approx(80, abs=2.0)
    plan = make_plan(stats, QUICK)
    assert plan.scale == pytest.approx(40 / stats.object_px, abs=0.01)
    # objects of ~40 px: depth 3 sees 68 px < 2 objects, depth 4 sees 140 px
    assert (plan.depth_low, plan.depth_high) == (4, 4)
    assert "downsampled" in plan.reasons["scale"]


def test_images_smaller_than_the_patch_get_a_fitted_patch_and_a_shallower_net() -> None:
    stats = profile_data(_discs(6, (40, 56), 6))
    plan = make_plan(stats, QUICK)
    assert plan.patch_size == (48, 64)  # each side rounded up to a multiple of 2**4
    assert plan.depth_high == 3  # a 48-px side keeps a 6-px bottleneck at depth 3, 3 at 4
    assert plan.depth_low == 3
    # the same pixels an epoch as 128 patches of 96 px, in whole batches
    assert plan.patches_per_epoch == 384 and plan.patches_per_epoch % plan.batch_size == 0


def test_normalization_follows_how_much_images_differ() -> None:
    alike = profile_data(_discs(6, (64, 64), 8, brightness=[200] * 6))
    differ = profile_data(_discs(6, (64, 64), 8, brightness=[60, 250, 90, 230, 70, 240]))
    assert make_plan(alike, QUICK).normalization == "dataset"
    assert make_plan(differ, QUICK).normalization == "zscore"
    pretrained = make_plan(differ, QUICK, {"encoder_weights": "imagenet"})
    assert pretrained.normalization == "default"


def test_images_deeper_than_8_bits_are_normalized_by_their_percentiles() -> None:
    """A 12-bit camera's grey images: each by its own 1st..99.8th percentile, whatever the
    spread (alike here); the fingerprint says their type and levels in their own values."""
    eight = _discs(6, (64, 64), 8, brightness=[200] * 6)
    twelve = DatasetArrays.of(
        [(eight.image(i)[..., :1].astype(np.uint16) * 16) for i in range(len(eight))],
        [eight.mask(i) for i in range(len(eight))],
    )
    stats = profile_data(twelve)
    assert (stats.pixels, twelve.pixels.shape[1]) == ("uint16", 1)
    assert stats.levels[0] >= 20 * 16 and 200 * 16 <= stats.levels[1] <= 209 * 16
    assert max(stats.mean_spread, stats.std_spread) <= 0.5  # alike, yet:
    plan = make_plan(stats, QUICK)
    assert plan.normalization == "percentile"
    assert plan.reasons["normalization"].startswith("uint16 images (median 1st..99.8th percentile")
    assert make_plan(profile_data(eight), QUICK).normalization == "dataset"


def test_given_values_bind_the_plan_and_the_plan_is_deterministic() -> None:
    arrays = _discs(4, (300, 500), 10)
    assert make_plan(profile_data(arrays), QUICK) == make_plan(profile_data(arrays), QUICK)
    given = make_plan(profile_data(arrays), QUICK, {"patch_size": (40, 40), "scale": 0.5})
    assert given.patch_size == (40, 40) and given.scale == 0.5
    assert given.depth_high == 3  # 40 is a multiple of 8, not of 16
    deep = make_plan(profile_data(arrays), QUICK, {"depth_max": 5})
    assert deep.patch_size == (96, 96) and all(s % 32 == 0 for s in deep.patch_size)
    assert len(given.lines()) == 7 and all(given.reasons.values())


def test_a_bad_budget_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="must be cpu-quick, cpu or gpu-<GiB"):
        parse_budget("tpu-8")


def _space(tmp_path: Path, fixed: dict, params: dict | None = None) -> Path:
    raw = {
        "name": "planned",
        "fixed": {"epochs": 2, **fixed},
        "params": params or {},
        "search": {"num_samples": 2, "baseline": "seed_keras"},
    }
    path = tmp_path / "planned.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_auto_in_a_space_is_filled_from_the_plan(tmp_path: Path) -> None:
    arrays = _discs(4, (300, 500), 10)
    path = _space(
        tmp_path,
        {"patch_size": "auto", "normalization": "auto", "batch_size": 4},
        {"depth": {"type": "int", "low": "auto", "high": "auto"}},
    )
    provisional = load_space(path)
    assert [str(a) for a in provisional.auto] == [
        "patch_size",
        "normalization",
        "depth.low",
        "depth.high",
    ]
    assert provisional.plan is None
    assert (
        list(provisional.base_config().data.patch_size) == PROVISIONAL["patch_size"] == [128, 128]
    )
    spec = plan_space(provisional, arrays)
    assert spec.settings.budget == "cpu-quick"  # the default without a GPU, kept for resume
    assert spec.plan is not None and spec.plan.batch_size == 4  # the given batch binds
    cfg = spec.base_config()
    assert cfg.data.patch_size == (96, 96) and cfg.data.normalization == "dataset"
    assert cfg.train.batch_size == 4
    (depth,) = spec.params
    assert (depth.low, depth.high) == (3, 4)
    baseline = spec.trial({"unet_search.baseline": True}).run
    assert baseline.data.input_mode == "resize" and baseline.data.normalization == "default"
    again = plan_space(load_space(path), arrays, "cpu-quick")
    assert again.fixed == spec.fixed and again.params == spec.params
    assert plan_space(spec, arrays) is spec  # planned once
    gpu = plan_space(load_space(path), arrays, "gpu-16")
    assert gpu.base_config().data.patch_size == (256, 256)
    assert [(p.low, p.high) for p in gpu.params] == [(3, 5)]


def test_auto_where_no_plan_fills_it_is_an_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"fixed.lr` cannot be `auto`"):
        load_space(_space(tmp_path, {"lr": "auto"}))
    bad = {"base_filters": {"type": "int", "low": "auto", "high": 32}}
    with pytest.raises(ConfigError, match=r"params.base_filters.low` cannot be `auto`"):
        load_space(_space(tmp_path, {}, bad))
    with pytest.raises(ConfigError, match=r"search\.budget"):
        load_space(_space(tmp_path, {}), ["search.budget=huge"])


def test_train_plans_every_planned_leaf_it_is_not_given() -> None:
    """`unet-search train` is the planned default: `auto` and left-out planned leaves are
    planned, given ones kept (and bind the plan); with all of them given nothing is."""
    arrays = _discs(4, (300, 500), 10)
    leaves, source = run_leaves(None, ["patch_size=auto", "depth=3", "normalization=auto"])
    cfg, plan = plan_run(leaves, source, arrays, "cpu-quick")
    assert plan is not None and cfg.model.depth == 3  # given: binds the patch (x8)
    assert cfg.data.patch_size == (96, 96) and cfg.data.normalization == "dataset"
    assert cfg.train.patches_per_epoch == plan.patches_per_epoch == 128  # left out: planned
    given, planned = plan_run(*run_leaves(None, ["patch_size=64"]), arrays, "cpu-quick")
    assert planned is not None and given.data.patch_size == (64, 64)  # given: kept
    assert (given.model.depth, given.train.patches_per_epoch) == (4, 288)  # planned for it
    assert given.model.depth == planned.depth and given.data.scale == planned.scale
    every = [f"{leaf}={planned.value(leaf)}" for leaf in PLANNED_LEAVES if leaf != "patch_size"]
    alone, none = plan_run(*run_leaves(None, ["patch_size=64", *every]), arrays)
    assert none is None and alone == given


def test_the_target_parts_touching_objects_when_many_touch() -> None:
    """The instance target is planned when objects touch (within 2 px: cells behind a thin
    membrane count), not for apart objects, not for a multi-class task, never over a value
    the user gave."""
    from unet_search.plan.profile import touching_objects

    labels = np.zeros((20, 30), np.int64)
    labels[2:8, 2:8], labels[2:8, 10:16], labels[12:18, 22:28] = 1, 2, 3  # 1 and 2: 2 px apart
    assert touching_objects(labels) == (2, 3)
    labels[2:8, 9] = 0
    labels[2:8, 10:16] = 0
    labels[2:8, 11:16] = 2  # 3 px apart: not touching
    assert touching_objects(labels) == (0, 3)

    apart = _discs(4, (120, 160), 10)
    assert profile_data(apart).touching == 0.0
    plan = make_plan(profile_data(apart), QUICK)
    assert plan.target == "semantic" and "components" in plan.reasons["target"]
    touching = []  # the same discs, each with a neighbour 1 px away (a thin membrane)
    for i in range(len(apart)):
        label = apart.instances(i).astype(np.int64)
        shifted = np.zeros_like(label)
        shifted[:, 11:] = label[:, :-11]
        touching.append(np.where((label == 0) & (shifted > 0), shifted + label.max(), label))
    arrays = DatasetArrays.of(
        [apart.image(i) for i in range(len(apart))], [t > 0 for t in touching], touching
    )
    stats = profile_data(arrays)
    assert stats.touching is not None and stats.touching >= 0.9
    plan = make_plan(stats, QUICK)
    assert plan.target == "boundary" and "touch another" in plan.reasons["target"]
    assert make_plan(stats, QUICK, {"target": "semantic"}).target == "semantic"
    image = apart.image(0)
    multi = DatasetArrays.of([image], [touching[0] > 0])  # no instance truth
    assert profile_data(multi).touching is None
    assert make_plan(profile_data(multi), QUICK).target == "semantic"


def test_size_warnings_name_the_images_that_will_spoil_a_run() -> None:
    from unet_search.cli.checks import size_warnings

    names = ("a", "b", "c")
    sizes = np.array([[1, 1], [300, 15], [400, 500]])
    assert size_warnings(names, sizes) == [
        "2 image(s) under 16 px on a side, too small to segment (the smallest patch a plan "
        "makes): a (1x1), b (300x15)"
    ]
    assert size_warnings(names[2:], sizes[2:], scale=0.5) == []
    (shrunk,) = size_warnings(names[2:], sizes[2:], scale=0.3)
    assert shrunk.startswith("the planned scale 0.3 shrinks every image below a third of its")
    assert "c (400x500)" in shrunk
