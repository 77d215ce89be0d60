"""Using a trained model: ``inference`` (``load_model`` and the ``Predictor``), ``objects``
(instances from a prediction), ``onnx`` (the ONNX export and its runtime), ``pyfunc_model``
(the MLflow models-from-code wrapper) and ``packaging`` (what a registered model is: the
pyfunc with the package as its code and its pinned requirements, logged and registered)."""
