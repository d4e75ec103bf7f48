"""The suite's logger. Library code reports through ``logging`` (the "jepa_eval" logger, one line per
message); the command line shows INFO and above on stderr (``setup_cli_logging``). A library user sees
warnings through Python's last-resort handler and configures the rest as for any library."""
from __future__ import annotations

import logging
import sys

LOGGER = logging.getLogger("jepa_eval")


class _StderrLines(logging.Handler):
    """Writes each record as one line to whatever ``sys.stderr`` is at that moment (redirections, test capture)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def get_logger(name: str) -> logging.Logger:
    """The logger of module ``name`` (a child of "jepa_eval")."""
    return logging.getLogger(name)


def setup_cli_logging(level: int = logging.INFO) -> None:
    """One plain stderr handler on the "jepa_eval" logger (idempotent); records still propagate to the
    root logger, so a caller's own logging configuration keeps working."""
    if not any(isinstance(h, _StderrLines) for h in LOGGER.handlers):
        handler = _StderrLines()
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOGGER.addHandler(handler)
    LOGGER.setLevel(level)
