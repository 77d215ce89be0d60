"""The stage that ends a search, above search, serve and report: ``run`` (a whole search
from start to registration: ``run_search``, ``resume_search``, the ``SearchResult``),
``scoring`` (the best model on the held-out test split, through ``predict``), ``summary`` (the
trials' summary on the parent run) and ``registration`` (the ONNX check, the latency tags and
the champion gate)."""
