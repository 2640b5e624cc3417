"""Errors a stage raises on purpose; the CLI prints them without a traceback and exits 1."""


class StageFailed(RuntimeError):
    """A stage met its failure condition (an error-level expectation or check, bad input)."""
