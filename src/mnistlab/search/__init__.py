"""Hyperparameter search on Optuna: spaces, resumable studies and their reports (see mnistlab.tune)."""
