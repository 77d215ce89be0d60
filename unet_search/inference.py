"""Where ``unet_search.inference`` was before the subpackages (issue 16), kept because every
model registered then is a models-from-code pyfunc whose ``pyfunc_model.py`` imports
``Predictor`` and ``find_model_dir`` from here. Today's code is :mod:`unet_search.serve`."""

from unet_search.serve.inference import Predictor, find_model_dir, load_model

__all__ = ["Predictor", "find_model_dir", "load_model"]
