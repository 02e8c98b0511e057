"""The run around the documents: lock, signals, the worker pool, budgets, progress, report."""
