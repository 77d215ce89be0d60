"""The stage that ends a search, above search, serve and report: the whole search from start
to registration (``run_search``, ``resume_search``), the best model scored on the held-out
test split, the summary, the registration and the report."""
