"""Using a trained model: ``inference`` (``load_model`` and the ``Predictor``), ``pyfunc_model``
(the MLflow models-from-code wrapper), ``export`` (logging a model for the registry)."""
