"""Reading mmengine checkpoints under torch >= 2.6.

mmengine 0.10.7 predates torch 2.6's ``torch.load(weights_only=True)`` default and cannot
read back its own checkpoints (they pickle its HistoryBuffer and numpy arrays), so resume,
``load_from`` and testing fail. Local files are read as mmengine always read them
(``weights_only=False``): load only checkpoints you trust, as with any mmengine checkpoint.
"""
from __future__ import annotations

from pathlib import Path

from plabel_kit import DataError


def load_checkpoint_file(filename, map_location="cpu") -> dict:
    """The pickled checkpoint dict of a local file; a missing file raises DataError."""
    import torch

    path = Path(filename).expanduser()
    if not path.is_file():
        raise DataError("checkpoint not found", path=path)
    return torch.load(path, map_location=map_location, weights_only=False)


def load_from_local_file(filename, map_location):
    """mmengine CheckpointLoader scheme for local paths (its name is what mmengine logs)."""
    return load_checkpoint_file(filename, map_location)


def read_mmengine_checkpoints():
    """Make mmengine's loader for local paths read its own checkpoints again."""
    from mmengine.runner import CheckpointLoader

    CheckpointLoader.register_scheme(prefixes="", loader=load_from_local_file, force=True)
