"""The planner, nnU-Net's fingerprint -> plan step between the data and training: ``profile``
(the dataset's numbers the planner reads: image and object sizes, foreground, intensities,
touching objects) and ``planner`` (the ``Plan``: every ``auto`` setting filled from the
profile within a compute budget, each with its reason; ``plan.json`` hands it on to a
search's trials and to ``resume``). Reads only ``core`` and ``data``: no torch, Ray or
MLflow."""
