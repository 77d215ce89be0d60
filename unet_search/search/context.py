"""What every piece of a search shares: the ``SearchContext`` handed to trials and callbacks,
the options a search is started or resumed with, the short architecture names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

from ray import tune

from unet_search.space.spec import SearchSpec
from unet_search.tracking.outage import DEFAULT_PATIENCE_S

__all__ = ["ARCH_SHORT", "ResumeOptions", "SearchContext", "SearchOptions"]


ARCH_SHORT = {"unet": "unet", "unetplusplus": "unet++", "unet3plus": "unet3+"}


@dataclass(frozen=True)
class SearchContext:
    """What every trial driver needs besides its config and the data."""

    spec: SearchSpec
    search_id: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    storage: str
    fingerprint: str
    code_version: str
    fault: str | None = None  # fault injection for tests ($UNET_SEARCH_FAULT of the driver)
    # How long an unreachable MLflow server is waited for ($UNET_SEARCH_TRACKING_PATIENCE_S).
    patience_s: float = DEFAULT_PATIENCE_S
    # The plain Otsu threshold's Dice on the validation images (None: multi-class).
    otsu_val_dice: float | None = None
    data_id: str = ""  # the data alone, and the split (unet_search.data.split.split_text)
    split: str = ""
    experiment: str = ""  # the Tune experiment the trials are in ("": the search id)

    @property
    def tune_experiment(self) -> str:
        return self.experiment or self.search_id


class SearchOptions(TypedDict, total=False):
    """What a new search may be given besides its space, data and work dir (keywords of
    :func:`unet_search.search.driver.start_search` and
    :func:`unet_search.finish.run.run_search`)."""

    name: str | None  # the search's name (default: the space's name and a number)
    model_name: str | None  # the registered model's name (default: the space's model_name)
    address: str | None  # a Ray cluster's address (default: a local Ray)
    storage: str | None  # where Tune keeps the trials' state (default: under the work dir)
    overrides: Sequence[str]  # the `--set` overrides, kept for `resume`
    callbacks: Sequence[tune.Callback]  # more Tune callbacks
    stopper: tune.Stopper | None  # a Tune stopper


class ResumeOptions(TypedDict, total=False):
    """Where an interrupted search continues (keywords of
    :func:`unet_search.search.driver.restart_search` and
    :func:`unet_search.finish.run.resume_search`)."""

    address: str | None  # a Ray cluster's address (default: a local Ray)
    storage: str | None  # where Tune keeps the trials' state (default: where it started)
