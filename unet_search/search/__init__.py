"""Ray Tune with Optuna: ``context`` (what every piece of a search shares), ``searcher``
(TPE that hears of pruned trials), ``asha`` (schedulers), ``trial`` (the trial driver),
``callbacks`` (trial status to MLflow), ``state`` (Tune's saved state, for resume),
``outcome`` (summaries, the best trial, the test split, registration), ``live`` (the
progress line), ``private`` (the private Ray/Optuna APIs we use, in one place), ``driver``
(``run_search`` and ``resume_search``)."""
