"""Training without Ray or MLflow: ``transforms`` (normalization, resize, augmentation),
``losses``, ``metrics``, ``engine`` (the epoch loop, validation), ``sliding`` (the one
whole-image predictor and the preprocessing a model is saved with), ``plan`` (the planner
that fills ``auto`` settings from a dataset's statistics and a compute budget),
``visualize`` (the overlays logged each epoch)."""
