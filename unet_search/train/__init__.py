"""Training without Ray or MLflow: ``transforms`` (normalization, resize, augmentation),
``losses``, ``metrics``, ``engine`` (the epoch loop, validation), ``sliding`` (the one
whole-image predictor and the preprocessing a model is saved with), ``instances`` (objects
from the network's output, the decoding chosen on validation images), ``latency`` (the one
way inference time is measured), ``average`` (the weight average), ``optim`` (optimizers,
schedules), ``visualize`` (the overlays logged each epoch). The planner is ``plan``, below."""
