"""A trial's role read back from its config: the baseline, the default, the final fit's start."""

from __future__ import annotations

from pathlib import Path

from space_files import small_space, write_space

from unet_search.space.load import load_space
from unet_search.space.role import FinalStart, TrialRole


def test_a_final_fit_config_reads_back_its_role_its_start_and_its_own_epochs(
    tmp_path: Path,
) -> None:
    spec = load_space(write_space(tmp_path, small_space()))
    sampled = {"encoder": "none", "upsampling:0": "transpose", "lr": 3e-3, "depth": 3}
    kept = FinalStart(7, init_checkpoint="/storage/s/t2/checkpoint_000001")
    role = TrialRole(4, default=True, final=kept)
    trial = spec.trial({**sampled, **role.keys()})
    assert trial.role == role and trial.role.final is not None
    assert trial.role.final.init_weights == "/storage/s/t2/checkpoint_000001"
    # The source's searched values, the final fit's own epochs (the space fixes 2).
    assert (trial.run.train.epochs, trial.run.optim.lr, trial.run.model.depth) == (7, 3e-3, 3)
    assert trial.run.model.upsampling == "transpose"
    assert FinalStart(7, init_run="abc").init_weights == "runs:/abc/best_model"
    assert FinalStart(7).init_weights == "scratch"
    assert TrialRole.of({}) == TrialRole() and TrialRole.of(None).final is None
