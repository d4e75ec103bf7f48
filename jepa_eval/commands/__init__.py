"""Sub-commands of ``jepa-eval``: one module each, discovered by ``jepa_eval.cli``."""
