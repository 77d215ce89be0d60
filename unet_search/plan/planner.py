"""Settings planned from the dataset's profile (:mod:`.profile`), within a compute budget
(nnU-Net's idea: the data's own numbers decide the pixel scale, the patch, the depth and the
normalization).

The rules, each printed with its reason by ``unet-search plan DIR``:

- ``scale``: 1.0 (the data's own pixels) unless the median object is larger than
  :data:`LARGE_OBJECT_PX` across; then downsampled so it becomes :data:`TARGET_OBJECT_PX`
  (never below 0.25, never shrinking the median image's short side under 64 px).
- ``patch_size``: the budget's patch (a square of ``budget.patch_side``), shrunk to the median
  image (scaled) where images are smaller, a multiple of ``2**depth``.
- ``depth`` bounds: at most the budget's depth, and as deep as keeps the bottleneck at least
  :data:`BOTTLENECK_PX` px (nnU-Net); at least the depth whose receptive field covers twice
  the median object (and never below 3 where the patch allows).
- ``batch_size``: the budget's on CPUs; on a GPU what its memory holds at
  :data:`GPU_BYTES_PER_PIXEL` bytes a pixel, in [2, 64].
- ``patches_per_epoch``: the budget's pixels per epoch over the patch's pixels, whole batches.
- ``normalization``: ``percentile`` (each image's 1st..99.8th percentile to 0..1) for images
  deeper than 8 bits (16-bit, float: any camera's range); for 8-bit ones ``zscore`` (per
  image) when their brightness or contrast differ (the spread of per-image means or stds
  above :data:`SPREAD_LIMIT` of the dataset's std), else ``dataset`` (one mean and std for
  all); ``default`` when pre-trained weights are asked for.
- ``target``: ``boundary`` (touching objects parted, :mod:`unet_search.data.targets`) when at
  least :data:`TOUCHING_LIMIT` of the objects lie within 2 px of another (cells behind a thin
  membrane count), else ``semantic``; ``semantic`` for multi-class tasks.
- ``lr`` is not planned: 1e-3 for every default (measured against 3e-3 on seven real sets:
  3 better, 4 worse; bench/README.md, "12, the planned default's learning rate").

Deterministic: the same data, budget and given values always give the same plan.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from unet_search.core.config import RunConfig, auto_leaves, build_run_config, provisional_config
from unet_search.core.errors import UserError
from unet_search.core.names import PLAN_FILE
from unet_search.core.sections import (
    AUTO,
    MAX_BOTTLENECK_TOKENS,
    PLANNED_LEAVES,
    bottleneck_side,
)
from unet_search.data.dataset import DatasetArrays
from unet_search.data.stats import scaled_size
from unet_search.plan.profile import DataProfile, profile_data

__all__ = [
    "BUDGETS",
    "Budget",
    "Plan",
    "default_budget",
    "make_plan",
    "parse_budget",
    "plan_run",
    "receptive_field",
]

LARGE_OBJECT_PX = 64.0
TARGET_OBJECT_PX = 40.0
MIN_SCALE = 0.25
MIN_SCALED_SIDE = 64
BOTTLENECK_PX = 4
MIN_DEPTH, MAX_DEPTH, PREFERRED_MIN_DEPTH = 2, 5, 3
SPREAD_LIMIT = 0.5
TOUCHING_LIMIT = 0.1  # of the objects near another: a mask's components would merge them
GPU_BYTES_PER_PIXEL = 4096  # a base-32 UNet's activations, gradients and optimizer, fp32
GPU_MEMORY_SHARE = 0.5  # the planned batch uses at most half the GPU's memory
GPU_STEPS_PER_EPOCH = 250  # nnU-Net's epoch


@dataclass(frozen=True)
class Budget:
    """What a run may spend: its largest patch, its batch, pixels per epoch, depth."""

    name: str
    patch_side: int
    batch_size: int | None  # None: from the GPU's memory
    epoch_pixels: int  # CPU: pixels trained on per epoch (patches_per_epoch x patch pixels)
    max_depth: int
    gpu_gib: float = 0.0  # GPU: an epoch is GPU_STEPS_PER_EPOCH batches

    def patches_per_epoch(self, patch: tuple[int, int], batch: int) -> tuple[int, str]:
        if self.gpu_gib:
            return GPU_STEPS_PER_EPOCH * batch, (
                f"{GPU_STEPS_PER_EPOCH} steps of {batch} patches an epoch (nnU-Net)"
            )
        pixels = patch[0] * patch[1]
        count = max(batch, round(self.epoch_pixels / pixels / batch) * batch)
        return count, (
            f"the {self.name} budget's {self.epoch_pixels / 1e6:.2f} M pixels an epoch over "
            f"{pixels} px a patch, whole batches of {batch}"
        )

    def batch_for(self, patch: tuple[int, int]) -> tuple[int, str]:
        if self.batch_size is not None:
            return self.batch_size, f"the {self.name} budget's batch"
        fits = (
            GPU_MEMORY_SHARE * self.gpu_gib * 2**30 / (GPU_BYTES_PER_PIXEL * patch[0] * patch[1])
        )
        batch = int(min(64, max(2, fits)))
        return batch, (
            f"{GPU_MEMORY_SHARE:.0%} of {self.gpu_gib:g} GiB at {GPU_BYTES_PER_PIXEL} B a pixel "
            f"holds {fits:.0f} patches (kept in [2, 64])"
        )


BUDGETS: dict[str, Budget] = {
    # A quick search on 2 CPU cores: 128 patches of 96 px per epoch, a few minutes in all.
    "cpu-quick": Budget("cpu-quick", 96, 8, 128 * 96 * 96, 4),
    "cpu": Budget("cpu", 128, 8, 512 * 128 * 128, 5),
}
BUDGET_RULE = "must be cpu-quick, cpu or gpu-<GiB of GPU memory> (e.g. gpu-24)"


def parse_budget(text: str) -> Budget:
    """``cpu-quick`` | ``cpu`` | ``gpu-<GiB>``: a GPU budget plans 256-px patches (512 px from
    40 GiB), the batch its memory holds and nnU-Net's 250 steps an epoch."""
    if text in BUDGETS:
        return BUDGETS[text]
    head, _, gib = text.partition("-")
    try:
        memory = float(gib)
    except ValueError:
        memory = 0.0
    if head != "gpu" or not 1.0 <= memory <= 4096.0:
        raise UserError(f"--budget {text!r}: {BUDGET_RULE}.")
    side = 512 if memory >= 40 else 256
    return Budget(f"gpu-{memory:g}", side, None, 0, MAX_DEPTH, memory)


def default_budget(uses_gpus: bool = False) -> Budget:
    """``cpu-quick`` without a GPU; with one (visible here, or asked for by the run config on
    a cluster whose GPUs this process may not see) a budget of the local GPU's memory, or 16
    GiB when none is visible."""
    import torch

    if torch.cuda.is_available():
        gib = torch.cuda.get_device_properties(0).total_memory / 2**30
        return parse_budget(f"gpu-{math.floor(gib)}")
    return parse_budget("gpu-16") if uses_gpus else BUDGETS["cpu-quick"]


def receptive_field(depth: int) -> int:
    """Receptive field (px) of a plain UNet's bottleneck: two 3x3 convolutions per level and
    a 2x2 pooling between levels (the decoder adds more)."""
    field_px, jump = 1, 1
    for level in range(depth + 1):
        field_px += 2 * 2 * jump  # two 3x3 convolutions
        if level < depth:
            field_px += jump  # a 2x2 pooling
            jump *= 2
    return field_px


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def _ceil_to(value: float, multiple: int) -> int:
    return max(multiple, math.ceil(value / multiple) * multiple)


def _divides(patch: tuple[int, int], depth: int) -> bool:
    return all(side % 2**depth == 0 for side in patch)


@dataclass(frozen=True)
class Plan:
    """Planned values, each with the reason printed next to it."""

    budget: str
    profile: DataProfile
    scale: float
    patch_size: tuple[int, int]
    depth: int  # a fixed depth: the deepest the rules allow
    depth_low: int
    depth_high: int
    batch_size: int
    patches_per_epoch: int
    normalization: str
    reasons: dict[str, str] = field(default_factory=dict)
    target: str = "semantic"  # after the reasons: plan.json files from before lack it

    def value(self, leaf: str) -> Any:
        """The planned value of a run-config leaf (one of PLANNED_LEAVES)."""
        return getattr(self, leaf)

    def to_json(self) -> str:
        """``plan.json``: every planned value, its reason and the profile it came from,
        what a later stage (``resume``) reads back instead of planning again."""
        raw = asdict(self)
        raw["stats"] = raw.pop("profile")  # the file's key since plans were first saved
        return json.dumps(raw, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = PLAN_FILE) -> Plan:
        """The plan :meth:`to_json` wrote; a clear error naming ``source`` if it is not one."""
        try:
            raw = json.loads(text)
            stats = raw.pop("stats")
            # JSON lists back to tuples (plans saved before `levels` existed lack it)
            tuples = ("median_size", "min_size", "mean", "std", "levels")
            profile = DataProfile(
                **{**stats, **{k: tuple(stats[k]) for k in tuples if k in stats}}
            )
            return cls(**{**raw, "profile": profile, "patch_size": tuple(raw["patch_size"])})
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"{source}: not a plan written by unet-search ({err})") from None

    def params(self) -> dict[str, Any]:
        """A search's parent run logs its plan as params (each trial logs its resolved
        config)."""
        return {
            "plan.budget": self.budget,
            "plan.object_px": self.profile.object_px,
            "plan.scale": self.scale,
            "plan.patch_size": list(self.patch_size),
            "plan.depth": f"{self.depth_low}..{self.depth_high}",
            "plan.batch_size": self.batch_size,
            "plan.patches_per_epoch": self.patches_per_epoch,
            "plan.normalization": self.normalization,
            "plan.target": self.target,
        }

    def text(self) -> str:
        """The profile and every value with its reason, as ``unet-search plan`` prints."""
        return "\n".join(
            [f"budget             {self.budget}", *self.profile.lines(), *self.lines()]
        )

    def lines(self) -> list[str]:
        shown = {
            "scale": f"{self.scale:g}",
            "patch_size": f"{self.patch_size[0]}x{self.patch_size[1]}",
            "depth": f"{self.depth_low}..{self.depth_high} (fixed: {self.depth})",
            "batch_size": str(self.batch_size),
            "patches_per_epoch": str(self.patches_per_epoch),
            "normalization": self.normalization,
            "target": self.target,
        }
        reasons = self.reasons  # a plan.json from before the target has no reason for it
        return [f"{leaf:18s} {shown[leaf]:12s} {reasons.get(leaf, '')}" for leaf in PLANNED_LEAVES]

    def space_yaml(self, name: str) -> str:
        """A quick search space with the planned values (``--out FILE.yaml``)."""
        space = {
            "name": name,
            "model_name": f"unet-{name}",
            "description": f"Planned by `unet-search plan` ({self.budget} budget).",
            "fixed": {
                "patch_size": list(self.patch_size),
                "scale": self.scale,
                "normalization": self.normalization,
                "target": self.target,
                "batch_size": self.batch_size,
                "patches_per_epoch": self.patches_per_epoch,
                "epochs": 6,
                "val_fraction": 0.2,
                "num_workers": 1,
            },
            "params": {
                "encoder": {"type": "choice", "values": ["none", "resnet18"]},
                "depth": {"type": "int", "low": self.depth_low, "high": self.depth_high},
                "upsampling": [
                    {
                        "type": "choice",
                        "values": ["transpose", "bilinear"],
                        "when": {"encoder": "none"},
                    },
                    {
                        "type": "choice",
                        "values": ["nearest", "bilinear"],
                        "when": {"encoder": "resnet18"},
                    },
                ],
                "base_filters": {"type": "choice", "values": [16, 32]},
                "dice_weight": {"type": "uniform", "low": 0.2, "high": 0.8},
                "lr": {"type": "loguniform", "low": 1.0e-3, "high": 1.0e-2},
            },
            "search": {
                "num_samples": 8,
                "metric": "val_dice",
                "baseline": "seed_keras",
                "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2},
            },
        }
        header = "".join(f"# {line}\n" for line in [*self.profile.lines(), *self.lines()])
        return header + yaml.safe_dump(space, sort_keys=False)


def _plan_scale(profile: DataProfile, given: Mapping[str, Any], why: dict[str, str]) -> float:
    """Pixel scale: only large objects are downsampled."""
    d = profile.object_px
    if "scale" in given:
        why["scale"] = "given"
        return float(given["scale"])
    if d is not None and d > LARGE_OBJECT_PX:
        floor = max(MIN_SCALE, MIN_SCALED_SIDE / max(min(profile.median_size), 1))
        scale = round(min(1.0, max(TARGET_OBJECT_PX / d, floor)), 2)
        why["scale"] = (
            f"median object {d:.0f} px > {LARGE_OBJECT_PX:.0f}: downsampled to ~{d * scale:.0f} "
            f"px (at least {MIN_SCALE}, the median image's short side >= {MIN_SCALED_SIDE})"
        )
        return scale
    why["scale"] = (
        "no objects found: the data's own pixels"
        if d is None
        else f"median object {d:.1f} px <= {LARGE_OBJECT_PX:.0f}: the data's own pixels"
    )
    return 1.0


def _plan_patch(
    median: tuple[int, ...],
    obj: float | None,
    budget: Budget,
    given: Mapping[str, Any],
    top: int,
    why: dict[str, str],
) -> tuple[int, int]:
    """The patch: a multiple of 2**``top``, the deepest depth that may run."""
    multiple = 2**top
    if "patch_size" in given:
        why["patch_size"] = "given"
        return int(given["patch_size"][0]), int(given["patch_size"][1])
    # Square, unless the images are narrower: then each side fits them (rounded up).
    side_cap = budget.patch_side
    if given.get("transformer"):  # its bottleneck at depth `top` holds <= the token limit
        side_cap = min(side_cap, math.isqrt(MAX_BOTTLENECK_TOKENS) * multiple)
    patch = tuple(min(_round_to(side_cap, multiple), _ceil_to(side, multiple)) for side in median)
    smaller = patch != (budget.patch_side, budget.patch_side)
    why["patch_size"] = (
        f"the median image ({median[0]}x{median[1]} px scaled) is smaller than the "
        f"{budget.name} budget's {budget.patch_side}-px patch: fitted to it, a multiple "
        f"of 2**{top}"
        if smaller
        else f"the {budget.name} budget's patch (images are {median[0]}x{median[1]} px "
        f"scaled), a multiple of 2**{top}"
    )
    if obj is not None and min(patch) < 2 * obj:
        why["patch_size"] += f"; narrower than 2 objects ({obj:.0f} px): a larger budget helps"
    return int(patch[0]), int(patch[1])


def _plan_depth(
    patch: tuple[int, int],
    obj: float | None,
    top: int,
    fixed_depth: int | None,
    budget: Budget,
    why: dict[str, str],
    transformer: bool = False,
) -> tuple[int, int, int]:
    """(depth, low, high): the bottleneck keeps BOTTLENECK_PX px; the receptive field covers
    two objects."""
    allowed = [
        k
        for k in range(MIN_DEPTH, MAX_DEPTH + 1)
        if k <= max(top, MIN_DEPTH)
        and min(patch) / 2**k >= BOTTLENECK_PX
        and _divides(patch, k)
        and (not transformer or math.prod(bottleneck_side(patch, k)) <= MAX_BOTTLENECK_TOKENS)
    ] or [MIN_DEPTH]
    high = max(allowed)
    need = 2 * obj if obj is not None else 0.0
    covering = [k for k in allowed if receptive_field(k) >= need and k >= PREFERRED_MIN_DEPTH]
    low = min(covering) if covering else high
    depth = int(fixed_depth) if fixed_depth is not None else high
    if not covering:
        reach = f"no depth's receptive field covers 2 objects ({need:.0f} px) here: the deepest"
    elif obj is None:
        reach = f"no objects to cover: at least {PREFERRED_MIN_DEPTH}"
    else:
        reach = f"receptive field {receptive_field(low)} px covers 2 objects ({need:.0f} px)" + (
            f" (at least {PREFERRED_MIN_DEPTH})" if low == PREFERRED_MIN_DEPTH else ""
        )
    if transformer:
        reach += f"; a transformer bottleneck holds <= {MAX_BOTTLENECK_TOKENS} tokens"
    why["depth"] = (
        f"<= {high}: the bottleneck of a {min(patch)}-px patch keeps >= {BOTTLENECK_PX} px"
        f" (budget depth {budget.max_depth}); >= {low}: {reach}"
        + ("; fixed: given" if fixed_depth is not None else "; fixed: the deepest")
    )
    return depth, low, high


def _plan_normalization(
    profile: DataProfile, given: Mapping[str, Any], why: dict[str, str]
) -> str:
    spread = max(profile.mean_spread, profile.std_spread)
    if given.get("encoder_weights"):
        why["normalization"] = "pre-trained encoder weights expect ImageNet statistics"
        return "default"
    if profile.pixels != "uint8":
        low, high = profile.levels
        why["normalization"] = (
            f"{profile.pixels} images (median 1st..99.8th percentile {low:g}..{high:g}): each "
            "image's own percentiles to 0..1 (Cellpose, CSBDeep), whatever its bit depth"
        )
        return "percentile"
    if spread > SPREAD_LIMIT:
        why["normalization"] = (
            f"images differ in brightness or contrast (spread {spread:.2f} of the dataset std "
            f"> {SPREAD_LIMIT}): each image by its own mean and std"
        )
        return "zscore"
    why["normalization"] = (
        f"images share one intensity range (spread {spread:.2f} <= {SPREAD_LIMIT}): the "
        "training images' mean and std"
    )
    return "dataset"


def _plan_target(profile: DataProfile, given: Mapping[str, Any], why: dict[str, str]) -> str:
    if "target" in given:
        why["target"] = "given"
        return str(given["target"])
    if profile.touching is None:
        why["target"] = "no instance truth (a multi-class task): the classes themselves"
        return "semantic"
    if profile.touching >= TOUCHING_LIMIT:
        why["target"] = (
            f"{profile.touching:.0%} of the objects touch another (>= {TOUCHING_LIMIT:.0%}): "
            "background / interior / boundary, so touching objects come out apart"
        )
        return "boundary"
    why["target"] = (
        f"{profile.touching:.0%} of the objects touch another (< {TOUCHING_LIMIT:.0%}): the "
        "mask's connected components are the objects"
    )
    return "semantic"


def make_plan(
    profile: DataProfile, budget: Budget, given: Mapping[str, Any] | None = None
) -> Plan:
    """The plan for ``profile`` within ``budget``. ``given`` holds values the user set (they
    bind the others): ``scale``, ``patch_size`` ((h, w)), ``depth`` (fixed), ``depth_max``
    (the largest searched depth), ``batch_size``, ``encoder_weights``, ``transformer`` (a
    transformer bottleneck may run: depths and patch keep its token limit)."""
    given = {k: v for k, v in (given or {}).items() if v is not None and v != AUTO}
    why: dict[str, str] = {}
    scale = _plan_scale(profile, given, why)
    obj = None if profile.object_px is None else profile.object_px * scale
    median = scaled_size(profile.median_size, scale)
    fixed_depth = given.get("depth")
    top = int(fixed_depth or given.get("depth_max") or budget.max_depth)
    patch = _plan_patch(median, obj, budget, given, top, why)
    transformer = bool(given.get("transformer"))
    depth, low, high = _plan_depth(patch, obj, top, fixed_depth, budget, why, transformer)
    if "batch_size" in given:
        batch, why["batch_size"] = int(given["batch_size"]), "given"
    else:
        batch, why["batch_size"] = budget.batch_for(patch)
    per_epoch, why["patches_per_epoch"] = budget.patches_per_epoch(patch, batch)
    norm = _plan_normalization(profile, given, why)
    target = _plan_target(profile, given, why)
    return Plan(
        budget.name, profile, scale, patch, depth, low, high, batch, per_epoch, norm, why, target
    )


def plan_run(
    flat: Mapping[str, Any], source: str, arrays: DatasetArrays, budget: str | None = None
) -> tuple[RunConfig, Plan | None]:
    """``train``'s config, the planned default (a search's default trial in its space): each
    planned leaf ``flat`` leaves out or gives as ``auto`` from ``arrays``' plan within
    ``budget`` (None: :func:`default_budget`); those it gives bind the plan."""
    flat = {**dict.fromkeys(PLANNED_LEAVES, AUTO), **flat}
    auto = auto_leaves(flat, source)
    if not auto:
        return build_run_config(flat, source), None
    provisional = provisional_config(flat, source)
    known = provisional.flat()  # drops a given patch or depth too
    given = {leaf: flat[leaf] for leaf in PLANNED_LEAVES if leaf not in auto}
    given["encoder_weights"] = known["encoder_weights"]
    given["transformer"] = known["bottleneck"] == "transformer"
    if isinstance(given.get("patch_size"), int):
        given["patch_size"] = (given["patch_size"], given["patch_size"])
    chosen = parse_budget(budget) if budget else default_budget(known["gpus_per_worker"] > 0)
    plan = make_plan(profile_data(arrays, provisional.data), chosen, given)
    resolved = {**flat, **{leaf: plan.value(leaf) for leaf in auto}}
    return build_run_config(resolved, source), plan
