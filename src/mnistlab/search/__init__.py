"""Hyperparameter search on Optuna: spaces, resumable studies and their reports (see mnistlab.search.tune)."""
