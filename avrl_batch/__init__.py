"""avrl-batch: find anomaly events in surveillance archives by listening and looking."""

__version__ = "0.1.0"
