"""What the final fit trains, worked out from made-up trial summaries (no Ray): the epochs
the exploring trials left of ``search.compute``, or why there is no final fit."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from unet_search.core.outcome import Outcome
from unet_search.search.context import SearchContext
from unet_search.search.final import choose_final_fit, explored_epochs
from unet_search.search.summaries import TrialSummary
from unet_search.space.load import load_space

QUICK = Path(__file__).parents[2] / "search_spaces" / "quick.yaml"


def _trial(
    name: str, epochs: int, outcome: Outcome = Outcome.FINISHED, **kw: bool
) -> TrialSummary:
    return TrialSummary(
        0,
        name,
        name,
        outcome,
        0.5,
        epochs,
        kw.get("baseline", False),
        name,
        {},
        final=kw.get("final", False),
    )


@pytest.fixture(scope="module")
def ctx() -> SearchContext:
    spec = load_space(QUICK)  # compute: 24 epochs, final_fit 0.7
    return SearchContext(spec, "quick-1", "sqlite://", "0", "parent", "/tmp/s", "fp", "v")


def _with(ctx: SearchContext, **search: Any) -> SearchContext:
    settings = ctx.spec.settings.with_values(**search)
    return dataclasses.replace(ctx, spec=dataclasses.replace(ctx.spec, settings=settings))


def test_the_exploring_trials_spend_what_they_trained_the_baseline_and_final_fit_apart() -> None:
    trials = [
        _trial("baseline", 6, baseline=True),
        _trial("default", 2, Outcome.STOPPED_EARLY),
        _trial("t2", 3),
        _trial("final", 17, final=True),
    ]
    assert explored_epochs(trials) == 5


def test_the_final_fit_trains_the_epochs_the_exploring_trials_left(ctx: SearchContext) -> None:
    trials = [_trial("default", 2, Outcome.STOPPED_EARLY), _trial("t2", 4)]
    source = trials[0]
    fit = choose_final_fit(ctx, trials, source, None, 0.0, "kept the default")
    assert fit is not None and fit.runs
    assert (fit.epochs, fit.explored_epochs, fit.source, fit.chosen) == (
        18,
        6,
        source,
        "kept the default",
    )


def test_no_final_fit_without_compute_a_source_or_epochs_left(ctx: SearchContext) -> None:
    trials = [_trial("t1", 12), _trial("t2", 12)]
    none = choose_final_fit(_with(ctx, compute=None), trials, trials[0], None, 0.0)
    assert none is None
    lost = choose_final_fit(ctx, trials, None, None, 0.0)
    assert lost is not None and not lost.runs and lost.why == "no exploring trial kept its weights"
    spent = choose_final_fit(ctx, trials, trials[0], None, 0.0)
    assert spent is not None and not spent.runs and spent.epochs == 0
    assert spent.why == "the exploring trials spent the whole compute"
    # A source stopped early has no logged model yet: one epoch more makes it one.
    stopped = _trial("t3", 24, Outcome.STOPPED_EARLY)
    one = choose_final_fit(ctx, [stopped], stopped, None, 0.0)
    assert one is not None and one.runs and one.epochs == 1
