"""Built-in plugin ``irnet``: IRNet's class-boundary network and label source (Ahn et al.,
CVPR 2019) and AffinityNet (Ahn & Kwak, CVPR 2018), which the ``randomwalk`` refiner uses
with ``affinity=affinitynet``. Both learn pixel affinities from a CAM label set's IR labels."""
from plabel_kit import hookimpl


@hookimpl
def register_label_sources(register):
    from .source import Irnet

    register(Irnet, name="irnet")
