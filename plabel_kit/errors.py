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


class BusyError(PlabelError):
    """Another process is writing the same output (label set, task or annotation folder)."""


class ComponentError(PlabelError):
    """A component (a plugin's code) raised something other than a PlabelError: the message
    names the component and the image ids it was working on; the traceback is in a log file
    and printed by ``plabel --debug``."""


class WriteError(PlabelError, OSError):
    """A file could not be written: disk full, file size limit, no permission, read-only file
    system. Still an ``OSError`` (with its ``errno``) for callers that catch those."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


_REASONS = {28: "no space left on device", 27: "file too large (file size limit)",
            122: "disk quota exceeded"}  # ENOSPC, EFBIG, EDQUOT


def write_error(exc: OSError, path, image_id: str | None = None, hint: str = "") -> WriteError:
    """``exc`` raised while writing ``path`` -> one line: what happened, the file, the id,
    what to do ("no space left on device writing LS/labels/a.png (id 'a'); <hint>")."""
    if isinstance(exc, WriteError):
        return exc
    reason = _REASONS.get(exc.errno) or (exc.strerror or type(exc).__name__).lower()
    where = f" (id {image_id!r})" if image_id is not None else ""
    return WriteError(f"{reason} writing {path}{where}" + (f"; {hint}" if hint else ""), exc.errno)
