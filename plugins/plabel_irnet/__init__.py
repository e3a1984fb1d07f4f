"""Built-in plugin ``irnet``: IRNet's class-boundary network and label source (Ahn et al.,
CVPR 2019) and AffinityNet (Ahn & Kwak, CVPR 2018), registered as the affinity
``affinitynet`` that the ``randomwalk`` refiner walks over with ``--set affinity=affinitynet``.
Both learn pixel affinities from labels of a CAM label set."""
from plabel_kit import hookimpl


@hookimpl
def register_label_sources(register):
    from .source import Irnet

    register(Irnet, name="irnet")


@hookimpl
def register_affinities(register):
    from .affinitynet import AffinityNetAffinity

    register(AffinityNetAffinity, name="affinitynet")
