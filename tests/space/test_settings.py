"""The search settings: an exploring trial's schedule under `final_fit_start: continue`."""

from __future__ import annotations

from pathlib import Path

from space_files import small_space, write_space

from unet_search.space.load import load_space
from unet_search.space.role import FinalStart, TrialRole


def test_with_continue_an_exploring_trials_schedule_spans_the_whole_compute(
    tmp_path: Path,
) -> None:
    """``final_fit_start: continue``: exploring trials are the first part of a long run (their
    LR schedule spans ``compute.epochs``); the baseline and the final fit keep their own."""
    search = {"num_samples": 4, "compute": {"epochs": 10}, "final_fit": 0.5}
    sampled = {"encoder": "none", "upsampling:0": "transpose", "lr": 3e-3, "depth": 3}
    for how, span in (("continue", 10), ("kept", 0)):
        raw = small_space(search={**search, "final_fit_start": how})
        spec = load_space(write_space(tmp_path, raw))
        assert spec.trial({**sampled, **TrialRole(2).keys()}).run.train.schedule_epochs == span
        baseline = spec.trial(TrialRole(0, baseline=True).keys()).run
        assert baseline.train.schedule_epochs == 0
        final = TrialRole(3, final=FinalStart(5, init_checkpoint="c", optimizer=True))
        assert spec.trial({**sampled, **final.keys()}).run.train.schedule_epochs == 0
        assert TrialRole.of(final.keys()) == final
