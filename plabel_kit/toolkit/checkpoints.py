"""Checkpoint files written atomically: a reader (or a resumed run after a kill) sees the old
file or the whole new one, never a truncated one."""
from __future__ import annotations

import io
from pathlib import Path

from ..labelset import write_atomic


def save_checkpoint(state, path) -> None:
    """``torch.save(state)`` to ``path`` through a temp file and ``os.replace``; a failed write
    (disk full, read-only) raises :class:`plabel_kit.errors.WriteError` naming ``path``.

    Serialised in memory first, so the bytes do not depend on a temp file's name."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(Path(path), buffer.getvalue(), hint="free some space and rerun: training resumes")


def load_checkpoint(path, what: str = "checkpoint") -> dict:
    """``torch.load`` of a trusted local file onto the CPU; ValueError naming ``path`` when it is
    not a dict (a state dict or a plabel checkpoint)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a {what} (a {type(state).__name__}, expected a dict)")
    return state


def check_classes(path, architecture: dict, classes) -> None:
    """ValueError naming ``path`` when the checkpoint's ``architecture["classes"]`` differ from
    the dataset's ``classes``: a network's outputs mean those classes only."""
    if architecture["classes"] != list(classes):
        raise ValueError(f"{path} was trained on classes {architecture['classes']}, the dataset has {list(classes)}")
