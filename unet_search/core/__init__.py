"""The lowest layer: the typed run configuration (``sections``, ``config``), user errors
(``errors``), the one table of metrics (``metrics``), every MLflow tag name (``tags``) and
where a run keeps its files (``env``). No Ray, no MLflow, no torch."""
