"""A search's saved state, ``search_state.json`` on its parent run: what ``resume`` and the
report need to find the search's space, data, storage and runs again. Written once when the
search starts (:func:`unet_search.search.state.save_state`), read back typed."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from unet_search.core.errors import UserError
from unet_search.core.names import SEARCH_STATE_FILE
from unet_search.tracking.client import log_text
from unet_search.tracking.read import find_search, require_text

__all__ = ["read_search_state", "SearchState", "write_search_state"]


@dataclass(frozen=True)
class SearchState:
    """Where a search is and what it was started with."""

    search_id: str
    space_file: str  # the space's file name, for messages
    space_source: str  # the space file's text, as the search read it
    overrides: tuple[str, ...]  # the --set overrides
    data_dir: str
    model_name: str
    storage: str  # Ray's storage root of the search's Tune experiments
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    fingerprint: str  # the data's, checked again by resume
    budget: str | None = None  # the plan's budget (None: not planned)

    def to_json(self) -> str:
        return json.dumps(
            {**dataclasses.asdict(self), "overrides": list(self.overrides)}, indent=2
        )

    @classmethod
    def from_json(cls, text: str, source: str = SEARCH_STATE_FILE) -> SearchState:
        """The state :meth:`to_json` wrote; a clear error naming ``source`` otherwise."""
        try:
            raw = json.loads(text)
            return cls(**{**raw, "overrides": tuple(raw["overrides"])})
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(
                f"{source}: not a search state written by unet-search ({err})"
            ) from None


def write_search_state(state: SearchState) -> None:
    """``state`` as the parent run's ``search_state.json``."""
    log_text(state.tracking_uri, state.parent_run_id, state.to_json(), SEARCH_STATE_FILE)


def read_search_state(uri: str, search_id: str) -> SearchState:
    """The saved state of search ``search_id``; a UserError if there is no such search."""
    parent = find_search(uri, search_id)
    text = require_text(uri, parent, SEARCH_STATE_FILE)
    return SearchState.from_json(text, f"{SEARCH_STATE_FILE} of search {search_id}")
