"""Errors that name the culprit.

:class:`ClusterFitError` marks a *user* error (bad input, bad config, missing data): the CLI prints
its message and exits with status 2, without a traceback. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class ClusterFitError(Exception):
    """A user error: its message says what is wrong and what to do about it."""


class ConfigError(ClusterFitError):
    """A bad config file, key, type or value."""


class DataError(ClusterFitError):
    """A missing, empty or unreadable dataset, or an item that cannot be decoded."""


class StorageError(ClusterFitError):
    """The run folder cannot be written or read: no space, not writable, a file missing."""
