"""plabel-kit: pseudo labels for weakly supervised semantic segmentation.

Public API: datasets (:func:`open_dataset`), label sets (:class:`LabelSet`,
:class:`LabelSetWriter`), component interfaces, the plugin hook marker :data:`hookimpl`,
metrics and the stage runners.
"""
__version__ = "0.1.0"

from .datasets import Dataset, open_dataset  # noqa: E402
from .errors import DataError, LabelSetError, PlabelError, RegistryError  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402
from .interfaces import Affinity, Combiner, Embedder, LabelSource, Refiner  # noqa: E402
from .labelset import LabelSet, LabelSetWriter  # noqa: E402
from .plugins import get_plugins, get_registry  # noqa: E402
from .types import IGNORE, PseudoLabel, Sample  # noqa: E402

__all__ = [
    "__version__", "Dataset", "open_dataset", "DataError", "LabelSetError", "PlabelError",
    "RegistryError", "hookimpl", "Affinity", "Combiner", "Embedder", "LabelSource", "Refiner",
    "LabelSet", "LabelSetWriter", "get_plugins", "get_registry", "IGNORE", "PseudoLabel", "Sample",
]
