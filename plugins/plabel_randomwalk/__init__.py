"""Built-in plugin ``randomwalk``: score maps propagated over pixel affinities (IRN, PSA)
with sparse operators (the ``randomwalk`` refiner), and the affinities ``image`` and
``boundary`` (components of kind ``affinity``; other plugins add theirs, e.g. ``irnet`` adds
``affinitynet``). Pure functions: :mod:`plabel_kit.toolkit.affinity` (pair affinities, IRN's
boundary-based one included) and :mod:`plabel_kit.toolkit.walk` (the walk).
"""
from plabel_kit import hookimpl


@hookimpl
def register_refiners(register):
    from .refiner import RandomWalk

    register(RandomWalk, name="randomwalk")


@hookimpl
def register_affinities(register):
    from .affinities import BoundaryAffinity, ImageAffinity

    register(ImageAffinity, name="image")
    register(BoundaryAffinity, name="boundary")
