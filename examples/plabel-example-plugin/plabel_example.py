"""A complete third-party plabel-kit plugin: one module, one entry-point line.

It adds a label source (``center_box``: the image's tag inside a centred box, a classic
box-prior baseline), a refiner (``mode_filter``: majority vote in a square window) and a
command (``plabel example-hello``). ``plabel_example_cam`` adds a trainable torch source,
``lse_cam``, built on ``plabel_kit.toolkit`` (see docs/plugins.md, "A new method on the toolkit").
"""
from dataclasses import dataclass

import click
import numpy as np

from plabel_kit import LabelSource, PseudoLabel, Refiner, hookimpl
from plabel_example_cam import LseCam


@dataclass
class CenterBox(LabelSource):
    """Reads image tags; writes each image's first tag inside a centred box of
    ``fraction`` of its sides, background outside. No paper: a box-prior baseline."""

    fraction: float = 0.5

    def predict(self, samples):
        out = []
        for sample in samples:
            h, w = sample.image.shape[:2]
            label = np.zeros((h, w), np.uint8)
            if sample.classes:
                dh, dw = int(h * (1 - self.fraction) / 2), int(w * (1 - self.fraction) / 2)
                label[dh:h - dh, dw:w - dw] = sample.classes[0]
            out.append(PseudoLabel(label))
        return out


@dataclass
class ModeFilter(Refiner):
    """Reads a label map; writes the most frequent id in each ``size`` x ``size`` window."""

    size: int = 3

    def refine(self, sample, pseudo):
        from scipy import ndimage

        def mode(values):
            return np.bincount(values.astype(np.int64)).argmax()

        label = ndimage.generic_filter(pseudo.label, mode, size=self.size, mode="nearest")
        return PseudoLabel(label.astype(np.uint8))


@hookimpl
def register_label_sources(register):
    register(CenterBox, name="center_box")
    register(LseCam, name="lse_cam")


@hookimpl
def register_refiners(register):
    register(ModeFilter, name="mode_filter")


@hookimpl
def register_commands(cli):
    @cli.command(name="example-hello")
    def hello():
        """Say hello from the example plugin."""
        click.echo("hello from plabel-example")
