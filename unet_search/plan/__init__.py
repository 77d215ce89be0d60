"""The planner, nnU-Net's fingerprint -> plan step between the data and training: ``profile``
(the dataset's numbers the planner reads: image and object sizes, foreground, intensities,
touching objects) and ``planner`` (the ``Plan``: every ``auto`` setting filled from the
profile within a compute budget, each with its reason; ``plan.json`` hands it on to a
search's trials and to ``resume``). The layer above ``models`` (STYLE.md rule 1: it may
count the models it plans) and below ``train``; today it reads only ``core`` and ``data``, and
imports no torch, Ray or MLflow."""
