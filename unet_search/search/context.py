"""What every piece of a search shares: the ``SearchContext`` handed to trials and callbacks,
the short architecture names."""

from __future__ import annotations

from dataclasses import dataclass

from unet_search.space.spec import SearchSpec
from unet_search.tracking.outage import DEFAULT_PATIENCE_S

__all__ = ["ARCH_SHORT", "SearchContext"]


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
