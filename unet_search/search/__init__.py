"""Ray Tune with Optuna: ``context`` (what every piece of a search shares), ``setup`` (Ray,
logs, resources), ``searcher`` (TPE that hears of pruned trials), ``asha`` (the schedulers),
``rungs`` (ASHA's rung arithmetic), ``incumbent`` (the planned default kept unless beaten),
``trial`` (the trial driver), ``callbacks`` (trial status to MLflow), ``state`` (Tune's saved
state, for resume), ``summaries`` (one summary per trial, the best), ``final`` (the final fit),
``pareto`` (several objectives), ``live`` and ``panel`` (the progress line and panel),
``private`` (the private Ray/Optuna APIs we use, in one place), ``driver`` (a search set up,
explored and resumed; :mod:`unet_search.finish.run` runs it through)."""
