"""CAM label source (IRNet's CAM step) on an MMSegmentation backbone."""
from plabel_kit import hookimpl


@hookimpl
def register_label_sources(register):
    from .source import Cam

    register(Cam, name="cam")
