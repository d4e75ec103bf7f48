"""Probes on frozen features: plain functions on arrays, no global state."""
from .attentive import AttentiveConfig, attentive_probe
from .knn import knn_eval
from .linear import LinearConfig, linear_probe
from .lowshot import fit_logreg_path, lowshot_eval

__all__ = ["knn_eval", "linear_probe", "LinearConfig", "lowshot_eval", "fit_logreg_path", "attentive_probe",
           "AttentiveConfig"]
