"""The lowest layer: the typed run configuration (``schema``, ``sections``, ``config``), user
errors (``errors``), the one table of metrics (``metrics``), how a trial ended and the MLflow
run statuses (``outcome``), every MLflow tag name (``tags``) and every other stored name
(``names``: artifacts, saved-model and checkpoint files, the trial slot), where a run keeps
its files (``env``) and files written whole (``files``). No Ray, no MLflow, no torch."""
