"""Built-in plugin ``crf``: the dense CRF refiner (pydensecrf, process pool).

The per-image functions live in :mod:`plabel_kit.toolkit.crf` for other plugins to call.
"""
from plabel_kit import hookimpl


@hookimpl
def register_refiners(register):
    from .refiner import DenseCRF

    register(DenseCRF, name="crf")
