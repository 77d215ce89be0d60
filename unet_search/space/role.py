"""A trial's role, read from its Tune config once: its number, and whether it is the seed
baseline, the planned default or a final fit (and where the final fit starts). The searched
values beside them are the space's (:meth:`unet_search.space.spec.SearchSpec.trial` parses
both into a :class:`Trial`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from unet_search.core.config import RunConfig
from unet_search.core.tags import TAG_BASELINE, TAG_DEFAULT, TAG_FINAL_FIT, TAG_TRIAL_NUMBER

__all__ = ["FinalStart", "Trial", "TrialRole"]


@dataclass(frozen=True)
class FinalStart:
    """Where a final fit starts (:mod:`unet_search.search.final`): its own epochs, and the
    source trial's checkpoint (a path or a URI of the search's storage) or its run's logged
    best model; neither: from scratch."""

    epochs: int
    init_run: str | None = None
    init_checkpoint: str | None = None
    optimizer: bool = False  # the checkpoint's last weights and optimizer (`continue`)

    @property
    def init_weights(self) -> str:
        """The final fit's param ``init_weights``: a checkpoint, ``runs:/<id>/best_model``
        or ``scratch``."""
        if self.init_checkpoint:
            return self.init_checkpoint
        if self.init_run:
            return f"runs:/{self.init_run}/best_model"
        return "scratch"


@dataclass(frozen=True)
class TrialRole:
    """What a trial's Tune config says the trial is, beside its searched values: its number
    (Optuna's), and whether it is the seed baseline, the planned default or a final fit.
    :meth:`of` is the one reader of those keys, :meth:`keys` their one writer."""

    number: int = 0
    baseline: bool = False
    default: bool = False
    final: FinalStart | None = None

    @classmethod
    def of(cls, trial_config: Mapping[str, Any] | None) -> TrialRole:
        config = trial_config or {}
        final = config.get(TAG_FINAL_FIT) or None
        return cls(
            int(config.get(TAG_TRIAL_NUMBER, 0)),
            bool(config.get(TAG_BASELINE)),
            bool(config.get(TAG_DEFAULT)),
            FinalStart(
                int(final["epochs"]),
                final.get("init_run"),
                final.get("init_checkpoint"),
                bool(final.get("optimizer", False)),
            )
            if final
            else None,
        )

    def keys(self) -> dict[str, Any]:
        """This role as the keys of a Tune config (what :meth:`of` reads back)."""
        out: dict[str, Any] = {TAG_TRIAL_NUMBER: self.number}
        if self.baseline:
            out[TAG_BASELINE] = True
        if self.default:
            out[TAG_DEFAULT] = True
        if self.final is not None:
            out[TAG_FINAL_FIT] = dataclasses.asdict(self.final)
        return out


@dataclass(frozen=True)
class Trial:
    """A trial's Tune config parsed once: its role and its full run config."""

    role: TrialRole
    run: RunConfig
