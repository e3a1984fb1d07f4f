"""Errors that reach the user as one line naming the file and the image id."""
from __future__ import annotations


class PlabelError(Exception):
    """A failure the user can act on; the CLI prints it as one line and exits non-zero."""


class DataError(PlabelError):
    """Bad input data: the message names the offending file and, where known, the image id."""

    def __init__(self, message: str, *, path=None, image_id: str | None = None):
        parts = []
        if path is not None:
            parts.append(str(path))
        if image_id is not None:
            parts.append(f"id {image_id!r}")
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.path = path
        self.image_id = image_id


class LabelSetError(PlabelError):
    """A label set that cannot be read, or cannot be written without mixing producers."""


class RegistryError(PlabelError):
    """Unknown or duplicate component names, bad component parameters."""
