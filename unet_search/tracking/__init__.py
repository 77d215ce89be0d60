"""MLflow: ``client`` (thin writes and the run tree of a search), ``outage`` (waiting out a
tracking server that is away, the outbox of a training run), ``read`` (read models for the
CLI and report), ``registry`` (the champion gate)."""
