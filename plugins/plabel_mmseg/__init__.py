"""Segmenters through MMSegmentation: train and test on pseudo labels (issue 7).

- mmseg parts, registered in mmseg's own registries: ``PlabelSegDataset`` (a plabel
  dataset with a label set or its masks as ``seg_map``, plus seed 000's manual labels),
  ``VGGEncoder`` / ``ResNetEncoder`` / ``UNetHead`` (seed 000's U-Nets) and ``FwIoUMetric``
  (mIoU and frequency-weighted IoU).
- ``plabel segment train|test|predict`` and the ``segmenter`` label source (a trained
  model's predictions as a label set).
Configs: ``configs/segmenters/``. Heavy imports stay inside the functions.
"""
from __future__ import annotations

from plabel_kit import hookimpl

#: modules whose import registers this plugin's parts in mmseg's registries
MMSEG_MODULES = ["plabel_mmseg.dataset", "plabel_mmseg.metric", "plabel_mmseg.vgg_encoder",
                 "plabel_mmseg.resnet_encoder", "plabel_mmseg.unet_head"]


@hookimpl
def mmseg_custom_imports():
    return list(MMSEG_MODULES)


@hookimpl
def register_label_sources(register):
    from .source import Segmenter

    register(Segmenter, name="segmenter")


@hookimpl
def register_commands(cli):
    from .commands import segment

    cli.add_command(segment)
