"""How a trial ended, worked out from its last result, and the MLflow run status of each end
(no Ray or MLflow)."""

from __future__ import annotations

from unet_search.core.outcome import (
    FINISHED_KEY,
    INFEASIBLE_KEY,
    Outcome,
    RunStatus,
    outcome_of,
)


def test_a_trial_ends_by_its_last_result() -> None:
    assert outcome_of({FINISHED_KEY: 1.0, "epoch": 6}) is Outcome.FINISHED
    assert outcome_of({"epoch": 2}) is Outcome.STOPPED_EARLY  # ASHA stopped it at a rung
    assert outcome_of(None) is Outcome.STOPPED_EARLY  # it reported nothing
    assert outcome_of({INFEASIBLE_KEY: 1.0, "epoch": 0}) is Outcome.INFEASIBLE
    assert outcome_of({FINISHED_KEY: 1.0}, failed=True) is Outcome.FAILED  # raised after


def test_each_end_has_its_run_status_and_a_status_reads_back_as_its_end() -> None:
    statuses = {o: o.run_status for o in Outcome}
    assert statuses == {
        Outcome.FINISHED: RunStatus.FINISHED,
        Outcome.STOPPED_EARLY: RunStatus.KILLED,
        Outcome.FAILED: RunStatus.FAILED,
        Outcome.INFEASIBLE: RunStatus.KILLED,
        Outcome.RUNNING: RunStatus.RUNNING,
    }
    assert RunStatus.FINISHED == "FINISHED"  # MLflow's own strings
    # read back, KILLED is stopped early (an infeasible run also carries the outcome tag)
    assert [Outcome.of_run_status(s) for s in ("FINISHED", "KILLED", "FAILED")] == [
        Outcome.FINISHED,
        Outcome.STOPPED_EARLY,
        Outcome.FAILED,
    ]
    assert Outcome.of_run_status("SCHEDULED") is Outcome.RUNNING  # not ended
