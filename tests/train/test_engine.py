from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from torch.utils.data import DataLoader

from unet_search.core.config import RunConfig
from unet_search.core.sections import DataConfig
from unet_search.data.dataset import DatasetArrays, load_dataset
from unet_search.data.synthetic import make_synthetic
from unet_search.models.build import build_model, save_model_dir
from unet_search.models.card import ModelCard
from unet_search.plan.planner import make_plan, parse_budget
from unet_search.plan.profile import profile_data
from unet_search.serve.inference import load_model
from unet_search.train.engine import (
    EarlyStopping,
    TrainingState,
    Validation,
    build_loaders,
    fit,
    new_training_state,
    seed_everything,
    train_one_epoch,
    validate,
)
from unet_search.train.losses import build_loss
from unet_search.train.sliding import preprocessing_of
from unet_search.train.transforms import normalization_for

CPU = torch.device("cpu")


def _setup(data: Path, cfg: RunConfig) -> tuple[TrainingState, DataLoader, Validation]:
    arrays = load_dataset(data, cfg.data)
    seed_everything(cfg.train.seed)
    train, val = build_loaders(cfg, arrays, rank=0, world=1)
    model = build_model(cfg.model, cfg.data.num_classes)
    return new_training_state(model, cfg, len(train), CPU), train, val


def _train(data: Path, leaves: dict) -> tuple[RunConfig, TrainingState]:
    cfg = RunConfig.from_dict(
        {
            "depth": 3,
            "base_filters": 8,
            "epochs": 5,
            "batch_size": 8,
            "lr": 3e-3,
            "val_fraction": 0.25,
            "dsb_every": 0,
            "aug_strength": 0.3,
            **leaves,
        }
    )
    state, train, val = _setup(data, cfg)
    fit(state, cfg, train, val, build_loss(cfg.loss), CPU)
    return cfg, state


def _held_out_dice(
    cfg: RunConfig,
    state: TrainingState,
    tmp: Path,
    images: list,
    truth: list,
    arrays: DatasetArrays | None = None,
) -> float:
    """Dice of the kept weights on images no run saw, through the predictor `predict` uses
    (``arrays``: the training data, which ``dataset`` normalization measures)."""
    state.module.load_state_dict(state.best_state or state.module.state_dict())
    norm = normalization_for(cfg, arrays)
    save_model_dir(tmp, state.module, ModelCard(cfg.model, 1, preprocessing_of(cfg, norm)))
    masks = load_model(tmp).predict(images)
    dices = [2 * (m & t).sum() / (m.sum() + t.sum()) for m, t in zip(masks, truth, strict=True)]
    return float(np.mean(dices))


@pytest.mark.slow
def test_patch_mode_beats_resize_mode_on_large_images_with_small_objects(tmp_path: Path) -> None:
    """Nuclei ~10 px across in 200-400 px non-square images: trained on patches at their own
    scale, a small UNet segments new images far better than trained on every image squashed
    to 64 px, at the same epoch budget (measured: 0.85 vs 0.54 on the validation images)."""
    torch.set_num_threads(2)
    style = {"size": 200, "max_size": 400, "object_px": 10, "style": "fluorescence"}
    make_synthetic(tmp_path / "d", n=12, seed=7, **style)
    make_synthetic(tmp_path / "new", n=3, seed=8, **style)
    new = load_dataset(tmp_path / "new", DataConfig())
    images = [new.image(i) for i in range(len(new))]
    truth = [new.mask(i) > 0 for i in range(len(new))]
    patch_cfg, patch = _train(tmp_path / "d", {"patch_size": 64, "patches_per_epoch": 64})
    resize_cfg, resize = _train(tmp_path / "d", {"input_mode": "resize", "image_size": 64})
    patch_dice = _held_out_dice(patch_cfg, patch, tmp_path / "patch", images, truth)
    resize_dice = _held_out_dice(resize_cfg, resize, tmp_path / "resize", images, truth)
    assert patch_dice >= resize_dice + 0.05, (patch_dice, resize_dice)
    assert patch_dice > 0.7


def test_a_last_batch_of_one_is_dropped_so_a_1x1_bottleneck_trains(synth_dir: Path) -> None:
    """32-px patches at depth 5 leave a 1 x 1 bottleneck: batch norm fails on a batch of one
    (one value per channel). 9 patches in batches of 4 would end with one: it is dropped."""
    leaves = {"patch_size": 32, "depth": 5, "batch_size": 4, "patches_per_epoch": 9}
    cfg, state = _train(synth_dir, {**leaves, "epochs": 1, "base_filters": 2})
    assert state.epoch == 1
    _, train, _ = _setup(synth_dir, cfg)
    assert [len(batch["image"]) for batch in train] == [4, 4]
    even = cfg.replace(patches_per_epoch=10)  # a last batch of 2 is kept
    _, train, _ = _setup(synth_dir, even)
    assert [len(batch["image"]) for batch in train] == [4, 4, 2]


def test_early_stopping_rules() -> None:
    up = EarlyStopping("val_dice", patience=2)
    assert [up.update(v, e) for e, v in enumerate([0.5, 0.6, 0.55, 0.58], 1)] == [
        True,
        True,
        False,
        False,
    ]
    assert up.should_stop and up.best == 0.6 and up.best_epoch == 2
    down = EarlyStopping("val_loss", patience=0)
    assert down.update(1.0, 1) and down.update(0.5, 2) and not down.update(0.7, 3)
    assert not down.should_stop  # patience 0: never stops


class RisingValidationLoss(torch.nn.Module):
    """A loss whose validation value rises every epoch (training still gets a gradient):
    early stopping must keep epoch 1 as the best and stop after `patience` more epochs."""

    def __init__(self) -> None:
        super().__init__()
        self.evaluations = 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return logits.float().mean() * 0.0 + 1.0
        self.evaluations += 1
        return logits.float().mean() * 0.0 + float(self.evaluations)


def test_fit_stops_early_and_keeps_best_weights(synth_dir: Path) -> None:
    cfg = RunConfig.from_dict(
        {
            "patch_size": 32,
            "patches_per_epoch": 8,
            "depth": 2,
            "base_filters": 4,
            "epochs": 6,
            "early_stop_patience": 2,
            "early_stop_metric": "val_loss",
            "val_fraction": 0.25,
            "dsb_every": 0,
        }
    )
    state, train, val = _setup(synth_dir, cfg)
    history: list[dict[str, float]] = []
    fit(state, cfg, train, val, RisingValidationLoss(), CPU, lambda m, s: history.append(m))
    assert [m["epoch"] for m in history] == [1.0, 2.0, 3.0]  # best at 1, then 2 bad epochs
    assert [m["finished"] for m in history] == [0.0, 0.0, 1.0]
    assert state.early.best_epoch == 1 and state.best_metrics["epoch"] == 1.0
    assert state.best_state is not None
    assert history[-1]["best_val_loss"] == history[0]["val_loss"]


def test_keep_weights_last_keeps_the_last_epoch_whatever_its_value(synth_dir: Path) -> None:
    leaves = {"patch_size": 32, "patches_per_epoch": 8, "depth": 2, "base_filters": 4}
    leaves |= {"epochs": 3, "early_stop_metric": "val_loss", "val_fraction": 0.25}
    cfg = RunConfig.from_dict({**leaves, "dsb_every": 0, "keep_weights": "last"})
    state, train, val = _setup(synth_dir, cfg)
    history: list[dict[str, float]] = []
    fit(state, cfg, train, val, RisingValidationLoss(), CPU, lambda m, s: history.append(m))
    losses = [m["val_loss"] for m in history]
    assert losses == sorted(set(losses)) and len(losses) == 3  # worse every epoch
    assert state.early.best_epoch == 1  # the best is still known ...
    assert state.best_metrics["epoch"] == 3.0  # ... but the last epoch is kept
    assert [m["best_val_loss"] for m in history] == losses
    assert state.best_state is not None
    now = state.module.state_dict()
    assert all(torch.equal(state.best_state[k], now[k]) for k in now)


def test_state_dict_round_trip_resumes_where_it_stopped(synth_dir: Path, tmp_path: Path) -> None:
    cfg = RunConfig.from_dict(
        {
            "patch_size": 32,
            "patches_per_epoch": 8,
            "depth": 2,
            "base_filters": 4,
            "epochs": 3,
            "val_fraction": 0.25,
            "dsb_every": 0,
        }
    )
    state, train, val = _setup(synth_dir, cfg)
    fit(state, cfg.replace(epochs=2), train, val, build_loss(cfg.loss), CPU)
    torch.save(state.state_dict(), tmp_path / "state.pt")
    fresh, _, _ = _setup(synth_dir, cfg)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert fresh.epoch == 2 and fresh.early.best == state.early.best
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            fresh.model.state_dict().values(), state.model.state_dict().values(), strict=True
        )
    )
    epochs: list[float] = []
    fit(fresh, cfg, train, val, build_loss(cfg.loss), CPU, lambda m, s: epochs.append(m["epoch"]))
    assert epochs == [3.0]


def test_a_run_that_goes_on_from_another_continues_its_optimizer_and_lr(synth_dir: Path) -> None:
    """``continue``: 2 epochs of a schedule spanning 8, then a run of 3 that goes on from
    there: its optimizer's state is the first run's (Adam's step count goes on), its LR
    starts where the first left it (no warm-up, no restart at the peak) and anneals to the
    schedule's end over its own epochs."""
    leaves = {"patch_size": 32, "patches_per_epoch": 16, "batch_size": 8, "lr": 1e-2}
    first_cfg = RunConfig.from_dict(
        {**leaves, "epochs": 2, "schedule_epochs": 8, "dsb_every": 0, "val_fraction": 0.25}
    )
    first, train, val = _setup(synth_dir, first_cfg)
    fit(first, first_cfg, train, val, build_loss(first_cfg.loss), CPU)
    left_at = first.optimizer.param_groups[0]["lr"]
    assert 0.5e-2 < left_at < 1e-2  # a quarter into a cosine over 8 epochs: not annealed
    steps = len(train) * 2
    cfg = first_cfg.replace(epochs=3, schedule_epochs=0)
    model = build_model(cfg.model, cfg.data.num_classes)
    model.load_state_dict(first.module.state_dict())
    saved = first.optimizer.state_dict()
    state = new_training_state(model, cfg, len(train), CPU, True, saved)
    adam = next(iter(state.optimizer.state.values()))
    assert int(adam["step"]) == steps
    lrs: list[float] = []
    fit(state, cfg, train, val, build_loss(cfg.loss), CPU, lambda m, s: lrs.append(m["lr"]))
    # After the first of its 3 epochs: a third down a cosine from where the first run left
    # the LR (not from 5% of the peak, not from the peak) to 1% of the peak.
    third = 1e-4 + (left_at - 1e-4) * (1 + math.cos(math.pi / 3)) / 2
    assert lrs[0] == pytest.approx(third, rel=1e-3)
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4, rel=1e-2)
    with pytest.raises(Exception, match="schedule_epochs"):
        RunConfig.from_dict({"epochs": 4, "schedule_epochs": 2})


def test_a_run_from_given_weights_never_keeps_worse_ones(synth_dir: Path) -> None:
    """Trained weights, then a run from them at a learning rate that wrecks them: its kept
    weights stay the ones it was given (epoch 0), with their validation values."""
    from unet_search.train.engine import keep_the_start

    cfg, trained = _train(synth_dir, {"patch_size": 32, "patches_per_epoch": 32, "epochs": 3})
    wreck = cfg.replace(lr=10.0, grad_clip=0.0, epochs=2, lr_schedule="none")
    state, train, val = _setup(synth_dir, wreck)
    state.module.load_state_dict(trained.best_state)
    start = keep_the_start(state, val, build_loss(cfg.loss), wreck, CPU)
    assert start["val_dice"] == pytest.approx(trained.best_metrics["val_dice"], abs=1e-6)
    assert start["val_dice"] > 0.5
    seen: list[float] = []
    fit(
        state,
        wreck,
        train,
        val,
        build_loss(cfg.loss),
        CPU,
        lambda m, s: seen.append(m["val_dice"]),
    )
    assert max(seen) < start["val_dice"]  # every epoch worse than the start
    assert state.early.best_epoch == 0 and state.best_metrics["val_dice"] == start["val_dice"]
    assert state.best_state is not None
    assert all(torch.equal(state.best_state[k], v) for k, v in trained.best_state.items())


def _sharded_validate(rank: int, world: int, init: str, data: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        cfg = RunConfig.from_dict(SHARD_CFG)
        arrays = load_dataset(Path(data), cfg.data)
        _, val = build_loaders(cfg, arrays, rank=rank, world=world)
        torch.manual_seed(0)
        model = build_model(cfg.model, 1)
        if rank > 0:  # as after a DDP step: equal weights, this rank's own BN statistics
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean += 0.5
                    module.running_var *= 3.0
        metrics = validate(model, val, build_loss(cfg.loss), cfg, CPU, with_dsb=True)
        if rank == 0:
            torch.save(metrics, out)
    finally:
        dist.destroy_process_group()


SHARD_CFG = {"depth": 2, "base_filters": 4, "patch_size": 32, "val_fraction": 0.5}


def test_validation_sharded_over_ranks_equals_one_process(synth_dir: Path, tmp_path: Path) -> None:
    """Each DDP rank scores its share of the whole validation images; the sums reduced over
    the ranks give what one process scoring them all with rank 0's model (the one kept and
    saved) gives, even where another rank's BatchNorm statistics drifted (they are rank 0's
    for validation)."""
    cfg = RunConfig.from_dict(SHARD_CFG)
    arrays = load_dataset(synth_dir, cfg.data)
    _, val = build_loaders(cfg, arrays, rank=0, world=1)
    assert len(val.indices) == 6
    torch.manual_seed(0)
    model = build_model(cfg.model, 1)
    alone = validate(model, val, build_loss(cfg.loss), cfg, CPU, with_dsb=True)
    out = tmp_path / "sharded.pt"
    torch.multiprocessing.spawn(
        _sharded_validate,
        args=(2, f"file://{tmp_path / 'store'}", str(synth_dir), str(out)),
        nprocs=2,
    )
    sharded = torch.load(out, weights_only=True)
    assert sharded.keys() == alone.keys()
    for key, value in alone.items():
        assert sharded[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_a_run_with_border_weights_trains_on_the_weighted_loss(synth_dir: Path) -> None:
    """``loss.border_weight``: the training batches carry the weight map and the epoch's
    loss is the weighted one (one batch: its loss before the step), not the plain one."""
    cfg = RunConfig.from_dict(
        {
            **{"depth": 2, "base_filters": 4, "dropout": 0.0, "epochs": 1, "batch_size": 8},
            **{"patch_size": 32, "patches_per_epoch": 8, "val_fraction": 0.25, "dsb_every": 0},
            **{"target": "boundary", "loss": "mix", "border_weight": 10.0},
        }
    )
    arrays = load_dataset(synth_dir, cfg.data)
    seed_everything(0)
    train, _ = build_loaders(cfg, arrays, rank=0, world=1)
    model = build_model(cfg.model, cfg.data.network_classes)
    state, loss_fn = new_training_state(model, cfg, len(train), CPU), build_loss(cfg.loss)
    (batch,) = list(train)
    assert batch["weights"].shape == (8, 32, 32) and float(batch["weights"].min()) >= 0.0
    model.train()
    with torch.no_grad():
        logits = model(batch["image"])
        weighted = float(loss_fn(logits, batch["mask"], batch["weights"]))
        plain = float(loss_fn(logits, batch["mask"]))
    assert abs(weighted - plain) > 1e-3
    metrics = train_one_epoch(state, train, loss_fn, cfg, CPU)
    assert metrics["train_loss"] == pytest.approx(weighted, rel=1e-4)


def _grey_copy(src: Path, dst: Path, convert: Any = None) -> None:
    """A DSB2018-layout copy of ``src`` whose images are grey: 8-bit PNGs, or TIFFs of
    ``convert(grey)``."""
    shutil.copytree(src, dst)
    for png in sorted(dst.glob("*/images/*.png")):
        grey = np.round(np.asarray(Image.open(png).convert("RGB")).mean(axis=2))
        if convert is None:
            Image.fromarray(grey.astype(np.uint8)).save(png)
            continue
        tifffile.imwrite(png.with_suffix(".tif"), convert(grey))
        png.unlink()


def test_16_bit_images_train_and_predict_as_well_as_their_8_bit_copies(tmp_path: Path) -> None:
    """Decoded as they are and normalized by the plan's choice for them (each image's
    percentiles, which the 8-bit copies get too), 16-bit images score within 0.02 held-out
    Dice of their 8-bit copies (before: divided by 257, the 8-bit values in a 16-bit file
    became black and scored Dice 0.32 on real nuclei). A 12-bit camera's values train a model
    of their own (measured over seeds 3, 5 and 7: within 0.010 of the 8-bit copies at 20
    epochs, 0.015 at 10: training noise, hence the epochs); 8-bit values in a 16-bit file are
    the very same training items as their 8-bit copy, and predict the same."""
    torch.set_num_threads(2)
    style = {"size": 64, "style": "fluorescence"}
    make_synthetic(tmp_path / "d", n=8, seed=3, **style)
    make_synthetic(tmp_path / "new", n=3, seed=4, **style)
    kinds = {
        "8-bit": None,
        "12-bit": lambda g: np.round(g * 4095 / 255).astype(np.uint16),  # a 12-bit camera's
        # the 2018 Data Science Bowl's nuclei TIFF: uint16 holding 0..255
        "8-bit in 16-bit": lambda g: g.astype(np.uint16),
    }
    leaves = {"patch_size": 64, "patches_per_epoch": 64, "epochs": 20}
    # all by the 16-bit plan's percentiles: the bits alone differ
    loading = RunConfig.from_dict({**leaves, "normalization": "percentile", "val_fraction": 0.25})
    dices, models, items = {}, {}, {}
    for k, (kind, convert) in enumerate(kinds.items()):
        for name in ("d", "new"):
            _grey_copy(tmp_path / name, tmp_path / f"{name}{k}", convert)
        arrays = load_dataset(tmp_path / f"d{k}", DataConfig(val_fraction=0.25))
        norm = make_plan(profile_data(arrays), parse_budget("cpu-quick")).normalization
        assert norm == "percentile" if convert else norm in ("dataset", "zscore"), norm
        items[kind] = next(iter(build_loaders(loading, arrays, rank=0, world=1)[0]))["image"]
        new = load_dataset(tmp_path / f"new{k}", DataConfig())
        assert new.pixels.shape[1] == 1  # grey: one channel
        assert new.pixels.dtype == (np.uint16 if convert else np.uint8)
        images = [new.image(i) for i in range(len(new))]
        truth = [new.mask(i) > 0 for i in range(len(new))]
        if kind != "8-bit in 16-bit":  # trains as the 8-bit copy does, item for item:
            models[kind] = _train(tmp_path / f"d{k}", {**leaves, "normalization": "percentile"})
        cfg, state = models.get(kind, models["8-bit"])
        dices[kind] = _held_out_dice(cfg, state, tmp_path / kind, images, truth, arrays)
    assert torch.equal(items["8-bit in 16-bit"], items["8-bit"])
    assert not torch.equal(items["12-bit"], items["8-bit"])  # its own rounding: its own model
    assert dices["8-bit"] > 0.8, dices
    assert dices["8-bit in 16-bit"] == pytest.approx(dices["8-bit"], abs=1e-9)
    assert abs(dices["12-bit"] - dices["8-bit"]) <= 0.02, dices
