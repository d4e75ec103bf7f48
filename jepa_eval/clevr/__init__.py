"""A procedural CLEVR-format scene generator (numpy + PIL) and VTAB's CLEVR labels."""
from .labels import COUNT_CLASSES, DIST_CLASSES, DIST_THRESHOLDS, count_label, dist_label, min_depth

__all__ = ["COUNT_CLASSES", "DIST_CLASSES", "DIST_THRESHOLDS", "count_label", "dist_label", "min_depth"]
