"""ISLE (seed 001) and the baseline ensembles it is compared with.

- ``isle``: per class, the input label set that scored best on a labelled subset.
- ``vote``: pixel-wise majority.
- ``maxconf``: per pixel, the most confident class over the inputs' score maps.
"""
from plabel_kit import hookimpl

from .isle import Isle
from .maxconf import MaxConf
from .vote import Vote


@hookimpl
def register_combiners(register):
    register(Isle, name="isle")
    register(Vote, name="vote")
    register(MaxConf, name="maxconf")
