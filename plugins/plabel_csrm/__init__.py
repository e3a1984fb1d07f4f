"""CSRM label source (seed 002: cross-supervision between a CAM branch and a segmentation
branch, EMA teacher, pixel contrast) on an MMSegmentation backbone."""
from plabel_kit import hookimpl


@hookimpl
def register_label_sources(register):
    from .source import Csrm

    register(Csrm, name="csrm")
