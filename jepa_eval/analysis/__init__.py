"""Label-free representation analysis: effective rank (RankMe) and linear CKA."""
from .similarity import cka_matrix, linear_cka, rankme

__all__ = ["rankme", "linear_cka", "cka_matrix"]
