"""The final fit: the best configuration of a search trains on with the compute the exploring
trials left (``search.compute``, ``search.final_fit``).

Exploring ranks configurations on short trials (``epochs`` each, cut shorter by ASHA, and
stopped where they are once the exploring share is spent); the final fit turns what it
learned into the model that is registered. Its source is the planned default unless a
challenger beat it at equal epochs by more than ``search.incumbent_margin``
(:mod:`unet_search.search.incumbent`; without the default among the candidates, or with a
margin of null, the best exploring trial by its best value so far); finished or stopped,
as long as it kept a checkpoint. It starts from
that trial's kept weights (its checkpoint's best epoch) with a schedule of its own over the
epochs left (``final_fit_start: kept``, the default: no epoch of the source trial is thrown
away) or from scratch with the long schedule (``scratch``). It is a Tune experiment of its own
(``<search>-final``, one trial, no searcher: Optuna ranks the exploring trials only), so
``resume`` continues it from its checkpoint, and a child run of the search's parent run
tagged ``unet_search.final_fit``, validated every epoch like every trial.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

from unet_search.core.outcome import Outcome
from unet_search.search.callbacks import TrialStatusCallback
from unet_search.search.context import SearchContext
from unet_search.search.incumbent import keep_or_switch
from unet_search.search.state import KEEP_CHECKPOINTS, DurableFIFO, SaveAfterCheckpoints
from unet_search.search.summaries import TrialSummary, choose, summaries
from unet_search.space.role import FinalStart, TrialRole
from unet_search.space.settings import SearchSettings

__all__ = [
    "explored_epochs",
    "FINAL_SUFFIX",
    "final_source",
    "FinalFit",
    "choose_final_fit",
    "run_final_fit",
]


FINAL_SUFFIX = "-final"  # the final fit's Tune experiment: <search id>-final


@dataclasses.dataclass(frozen=True)
class FinalFit:
    """What the final fit does, or why there is none (``epochs`` 0 and ``why``)."""

    epochs: int
    source: TrialSummary | None  # the exploring trial whose configuration trains on
    explored_epochs: int  # what the exploring trials spent (the baseline not counted)
    why: str = ""  # why there is no final fit
    chosen: str = ""  # why ``source``: the incumbent rule's verdict (empty without it)

    @property
    def runs(self) -> bool:
        return self.epochs > 0 and self.source is not None


def explored_epochs(trials: list[TrialSummary]) -> int:
    """Epochs the exploring trials trained, summed (the seed baseline is a reference)."""
    return sum(t.epochs for t in trials if not t.baseline and not t.final)


def _checkpoint_of(result: Any) -> str | None:
    """Where a trial's last checkpoint is: a folder, or a URI of the search's storage. An
    in-process trial's is Tune's; a TorchTrainer trial's is Ray Train's, which Tune only
    hears of as ``checkpoint_path`` in the trial's metrics."""
    checkpoint = result.checkpoint
    if checkpoint is None:
        path = (result.metrics or {}).get(CHECKPOINT_PATH_KEY)
        return str(path) if path else None
    kind = checkpoint.filesystem.type_name
    return checkpoint.path if kind == "local" else f"{kind}://{checkpoint.path}"


def final_source(
    trials: list[TrialSummary], results: tune.ResultGrid, settings: SearchSettings
) -> tuple[TrialSummary | None, str]:
    """The exploring trial the final fit trains on, and why (empty when no rule decided):
    of those that kept weights (a checkpoint, or a logged best model; finished or stopped
    early alike, since a search with a final fit stops its trials where the exploring budget
    ends), the planned default unless a challenger beat it at equal epochs by more than
    ``search.incumbent_margin``; without the default among them, ``pick: knee`` or a margin
    of null, the best (:func:`choose`). Never the baseline (a reference) or a failed trial."""
    candidates = [
        t
        for t in trials
        if not t.baseline
        and not t.final
        and t.value is not None
        and t.outcome is not Outcome.FAILED
        and not t.infeasible
        and (_checkpoint_of(_result_of(results, t)) or (t.finished and t.run_id))
    ]
    default = next((i for i, t in enumerate(candidates) if t.default), None)
    margin = settings.incumbent_margin
    if default is None or margin is None or settings.pick == "knee":
        return choose(candidates, settings), ""
    verdict = keep_or_switch(
        [t.curve for t in candidates],
        [t.value or 0.0 for t in candidates],
        [t.name for t in candidates],
        default,
        settings.mode,
        margin,
    )
    return candidates[verdict.chosen], verdict.why


def choose_final_fit(
    ctx: SearchContext,
    trials: list[TrialSummary],
    best: TrialSummary | None,
    results: tune.ResultGrid,
    started_s: float,
    chosen: str = "",
) -> FinalFit | None:
    """The final fit of ``best`` within ``search.compute``: the epochs the exploring trials
    left, and with ``hours`` no more than the time left allows at ``best``'s seconds per
    epoch (``started_s``: the search's start, Unix time). None without ``search.compute``."""
    settings = ctx.spec.settings
    compute = settings.compute
    if compute is None:
        return None
    spent = explored_epochs(trials)
    if best is None:
        return FinalFit(0, None, spent, "no exploring trial kept its weights")
    left = math.inf if compute.epochs is None else compute.epochs - spent
    if compute.hours is not None:
        seconds_left = compute.hours * 3600.0 - (time.time() - started_s)
        left = min(left, math.floor(seconds_left / max(_seconds_per_epoch(results, best), 1e-3)))
    epochs = max(0, int(left))
    if epochs == 0 and best.finished:
        return FinalFit(0, best, spent, "the exploring trials spent the whole compute", chosen)
    # A best that stopped early has no logged model yet: one epoch more makes it one.
    return FinalFit(max(epochs, 1), best, spent, chosen=chosen)


def _result_of(results: tune.ResultGrid, trial: TrialSummary) -> Any:
    """The Tune result of ``trial``."""
    return next(
        r
        for r in results  # type: ignore[attr-defined]  # ResultGrid is iterable
        if (r.metrics or {}).get("trial_id") == trial.trial_id
    )


def _seconds_per_epoch(results: tune.ResultGrid, trial: TrialSummary) -> float:
    """Wall seconds an epoch of ``trial`` took (training, validation and logging)."""
    metrics = _result_of(results, trial).metrics or {}
    if not metrics.get("training_iteration"):
        return 60.0
    return float(metrics["time_total_s"]) / float(metrics["training_iteration"])


def _final_config(ctx: SearchContext, fit: FinalFit, results: tune.ResultGrid) -> dict[str, Any]:
    """The source trial's Tune config with the final fit's epochs and starting weights."""
    assert fit.source is not None
    result = _result_of(results, fit.source)
    how = ctx.spec.settings.final_fit_start
    start = FinalStart(fit.epochs)  # from scratch
    if how != "scratch":
        checkpoint = _checkpoint_of(result)
        if checkpoint:
            go_on = how == "continue"
            start = FinalStart(fit.epochs, init_checkpoint=checkpoint, optimizer=go_on)
        else:  # a finished trial whose checkpoint is gone: its logged best model
            start = FinalStart(fit.epochs, init_run=fit.source.run_id)
    role = dataclasses.replace(TrialRole.of(result.config), final=start)
    return {**(result.config or {}), **role.keys()}


def run_final_fit(
    ctx: SearchContext,
    trainable: Callable[[SearchContext], Any],
    fit: FinalFit,
    results: tune.ResultGrid,
    live: tune.Callback,
) -> TrialSummary | None:
    """Train the final fit (or continue it after ``resume``); its summary, None if it
    failed. ``trainable``: the trial function of a context; the final fit's trial gets the
    final fit's, whose Tune experiment it waits to be saved in before it opens its run."""
    path = ctx.storage.rstrip("/") + "/" + ctx.search_id + FINAL_SUFFIX
    final_ctx = dataclasses.replace(ctx, experiment=ctx.search_id + FINAL_SUFFIX)
    scheduler = DurableFIFO()
    callbacks = [TrialStatusCallback(final_ctx), live, SaveAfterCheckpoints(scheduler)]
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(
            path, trainable=trainable(final_ctx), resume_unfinished=True, resume_errored=True
        )
    else:
        tuner = tune.Tuner(
            trainable(final_ctx),
            param_space=_final_config(ctx, fit, results),
            tune_config=tune.TuneConfig(num_samples=1, scheduler=scheduler),
            run_config=tune.RunConfig(
                name=final_ctx.experiment,
                storage_path=ctx.storage,
                callbacks=callbacks,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
                verbose=0,
            ),
        )
    final = summaries(tuner.fit(), ctx)
    done = [t for t in final if t.finished and t.value is not None and t.run_id]
    return done[0] if done else None
