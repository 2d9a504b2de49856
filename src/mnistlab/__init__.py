"""mnistlab: a workbench for developing and fine-tuning image classifiers on MNIST and its family."""

__version__ = "0.1.0"
