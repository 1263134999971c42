"""User-facing errors. The CLI turns every :class:`SealsError` into one line on stderr and exit code 2."""

from __future__ import annotations


class SealsError(Exception):
    """Bad input or an impossible setting: the message names the bad value and how to fix it."""


class StoreError(SealsError):
    """The embedding store is missing, corrupt or inconsistent."""


class IndexError_(SealsError):
    """The index is missing, corrupt, or was built from another store."""


class ConfigError(SealsError):
    """A run setting is impossible (budget below the seed set, k < 1, unknown strategy, ...)."""


class RunDirError(SealsError):
    """The run folder is in use, not empty, or its checkpoint does not match."""


class AnswerError(SealsError):
    """An answer file of a queue round is missing, malformed, or does not answer exactly the queued items."""
