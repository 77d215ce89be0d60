"""The search report: ``data`` (what it reads from MLflow), ``figures`` (best-so-far,
parallel coordinates, importance, cost) and ``page`` (the self-contained HTML page)."""
