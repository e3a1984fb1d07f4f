"""Sequence merge (seed 000, Mousavi et al.): sequence images of evolving subjects
(SChISM), annotate one image per sequence, carry that mask onto the sequence's other
images and merge it with their CAM labels.

- embedders ``thumbnail`` (training-free), ``backbone`` (a local pretrained ResNet checkpoint,
  SChISM's ImageNet ResNet-50) and ``cam_features`` (a trained ``cam`` backbone);
- label source ``seqmerge``;
- commands ``plabel sequence build|show|tasks|simulate-annotations``.
"""
from plabel_kit import hookimpl


@hookimpl
def register_embedders(register):
    from .embedders import BackboneFeatures, CamFeatures, Thumbnail

    register(Thumbnail, name="thumbnail")
    register(BackboneFeatures, name="backbone")
    register(CamFeatures, name="cam_features")


@hookimpl
def register_label_sources(register):
    from .source import SeqMerge

    register(SeqMerge, name="seqmerge")


@hookimpl
def register_commands(cli):
    from .commands import sequence

    cli.add_command(sequence)
