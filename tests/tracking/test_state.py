"""A search's saved state (search_state.json), typed, written and read back on a real
MLflow store; the files searches wrote before it was typed still read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import store_in

from unet_search.core.errors import UserError
from unet_search.core.tags import TAG_KIND, TAG_SEARCH_ID
from unet_search.tracking.client import create_run, ensure_experiment
from unet_search.tracking.state import SearchState, read_search_state, write_search_state

# What search/state.py wrote before the state was typed (a plain dict's JSON).
BEFORE = {
    "search_id": "quick-3",
    "space_file": "quick.yaml",
    "space_source": "name: quick\n",
    "overrides": ["epochs=2", "search.num_samples=3"],
    "data_dir": "/data/synth",
    "model_name": "unet-quick",
    "storage": "/runs/ray_results",
    "tracking_uri": "sqlite:////runs/mlflow.db",
    "experiment_id": "1",
    "parent_run_id": "abc",
    "fingerprint": "f00d",
    "budget": "cpu-quick",
}


def test_a_state_written_before_it_was_typed_reads_back_typed() -> None:
    state = SearchState.from_json(json.dumps(BEFORE, indent=2))
    assert state.overrides == ("epochs=2", "search.num_samples=3")
    assert (state.search_id, state.budget, state.fingerprint) == ("quick-3", "cpu-quick", "f00d")
    assert json.loads(state.to_json()) == BEFORE  # the same file again: other tools read it


def test_the_state_round_trips_through_the_parent_run(tmp_path: Path, empty_store: Path) -> None:
    uri = store_in(tmp_path, empty_store)
    experiment = ensure_experiment(uri, "quick", tmp_path)
    parent = create_run(
        uri, experiment, "quick-3", {}, {TAG_SEARCH_ID: "quick-3", TAG_KIND: "search"}
    )
    state = SearchState.from_json(
        json.dumps({**BEFORE, "tracking_uri": uri, "parent_run_id": parent, "budget": None})
    )
    write_search_state(state)
    assert read_search_state(uri, "quick-3") == state
    with pytest.raises(UserError, match="no search named 'quick-9'"):
        read_search_state(uri, "quick-9")


@pytest.mark.parametrize(
    "text",
    ["{not json", json.dumps({k: v for k, v in BEFORE.items() if k != "fingerprint"})],
)
def test_a_broken_state_is_a_clear_error_naming_the_file(text: str) -> None:
    with pytest.raises(UserError, match=r"search_state\.json: not a search state written by"):
        SearchState.from_json(text)
