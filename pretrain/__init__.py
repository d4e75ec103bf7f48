"""Compact I-JEPA pretraining that writes checkpoints in the official layout."""
