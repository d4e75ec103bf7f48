"""Comparison reports: tables (explicit aggregation, missing cells kept, published rows), figures,
Markdown, self-contained HTML and CSV."""
from .build import ReportPaths, build_report

__all__ = ["build_report", "ReportPaths"]
