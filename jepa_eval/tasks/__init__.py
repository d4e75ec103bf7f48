"""Registered tasks: each module here defines one task with ``@register_task``."""
