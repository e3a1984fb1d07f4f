"""Built-in plugin ``randomwalk``: score maps propagated over pixel affinities (IRN, PSA)
with sparse operators. Pure functions: :mod:`plabel_randomwalk.affinity` (pair affinities,
IRN's boundary-based one included) and :mod:`plabel_randomwalk.walk` (the walk).
"""
from plabel_kit import hookimpl


@hookimpl
def register_refiners(register):
    from .refiner import RandomWalk

    register(RandomWalk, name="randomwalk")
