"""Probes on frozen features: plain functions on arrays, no global state."""
from .knn import knn_eval

__all__ = ["knn_eval"]
