"""What the report reads: a search's record from MLflow and its space, in one object."""

from __future__ import annotations

import math
from dataclasses import dataclass

from unet_search.core.metrics import METRICS, best_key, better, sign
from unet_search.space.load import load_space_text
from unet_search.space.spec import SearchSpec
from unet_search.tracking.read import SearchRecord, TrialRecord, search_record
from unet_search.tracking.state import read_search_state

__all__ = ["ReportData", "load_report_data"]


@dataclass(frozen=True)
class ReportData:
    """What the report needs: the search as MLflow holds it and its validated space."""

    uri: str
    record: SearchRecord
    spec: SearchSpec
    model_name: str

    @property
    def metric(self) -> str:
        return self.spec.settings.metric

    @property
    def sign(self) -> float:
        return sign(METRICS[self.metric].mode)

    def value(self, trial: TrialRecord) -> float | None:
        """A trial's best value of the search metric (the weights it kept)."""
        value = trial.metrics.get(best_key(self.metric))
        return None if value is None or math.isnan(value) else float(value)

    def better(self, a: float, b: float) -> bool:
        return better(METRICS[self.metric].mode, a, b)


def load_report_data(uri: str, search_id: str) -> ReportData:
    """The search ``search_id`` read back from MLflow (a UserError if there is none)."""
    state = read_search_state(uri, search_id)
    # the search ran it: read it back without walking its model combinations again
    spec = load_space_text(
        state.space_source, state.space_file, state.overrides, combinations=False
    )
    return ReportData(uri, search_record(uri, search_id), spec, state.model_name)
