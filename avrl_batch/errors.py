"""Errors a user can cause. The CLI prints them as one line (no traceback) and exits 2."""

from __future__ import annotations


class AvrlError(Exception):
    """Base of every user-facing error: the message says what went wrong and what to do."""


class ConfigError(AvrlError, ValueError):
    """An invalid setting: unknown preset, fusion, modality, bad option value."""


class WeightsError(AvrlError):
    """A model or weights file that cannot be used (missing, malformed, wrong keys, pickle)."""


class StorageError(AvrlError):
    """A URI that cannot be listed, read or written (bad scheme, missing bucket, denied)."""


class DataError(AvrlError):
    """A clip manifest or prepared dataset that cannot be used (missing, empty split, unknown
    label, geometry that does not fit the model)."""
