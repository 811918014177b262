"""Every error a user can cause or fix, under one base: :class:`EsvitError`.

The CLI catches :class:`EsvitError` once and prints its message on one line (exit code 2 for a wrong config or
command line, 1 for everything else); any other exception is a bug and keeps its traceback. Each class also
derives from the built-in type it replaced (``ValueError``, ``RuntimeError``, ``OSError``), so callers that
catch those keep working. This module imports nothing: every layer of the package may raise these.
"""

from __future__ import annotations

__all__ = [
    "EsvitError",
    "ConfigError",
    "UsageError",
    "SourceError",
    "ShardError",
    "CheckpointError",
    "TrainingError",
    "FeatureError",
    "LockError",
    "DeviceError",
    "WriteError",
    "DownloadError",
    "LaunchError",
    "ReportError",
]


class EsvitError(Exception):
    """Base of the errors whose message tells the user what is wrong and what to do."""

    exit_code = 1


class ConfigError(EsvitError, ValueError):
    """A config value is wrong; the message names the key, the value and the fix."""

    exit_code = 2


class UsageError(EsvitError, ValueError):
    """Wrong command-line arguments."""

    exit_code = 2


class SourceError(EsvitError, RuntimeError):
    """Raw data for a source is missing or unusable; the message says what to install or download."""


class ShardError(EsvitError, RuntimeError):
    """Sharding failed (too many bad images, no records, ...); nothing final was written."""


class CheckpointError(EsvitError, RuntimeError):
    """A checkpoint is missing, unreadable, unsafe or not from this project."""


class TrainingError(EsvitError, RuntimeError):
    """Training cannot go on (non-finite loss, bad data); the last good checkpoint is kept."""


class FeatureError(EsvitError, ValueError):
    """Features or labels that cannot be evaluated as they are (or a feature cache that is missing)."""


class LockError(EsvitError, RuntimeError):
    """Another process is working in the same folder."""


class DeviceError(EsvitError, RuntimeError):
    """The requested device is not available here."""


class WriteError(EsvitError, OSError):
    """An artifact could not be written: the disk is full or a file-size limit was reached."""


class DownloadError(EsvitError, RuntimeError):
    """A download failed or a file failed its check; the message names the file, the URL and what to do."""


class LaunchError(EsvitError, RuntimeError):
    """The site cannot run the job as configured, or the job failed; the message says which and what to do."""


class ReportError(EsvitError, ValueError):
    """A report cannot be built as asked (e.g. an unknown baseline run)."""
