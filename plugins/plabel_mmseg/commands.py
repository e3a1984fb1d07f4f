"""``plabel segment train|test|predict``: MMSegmentation segmenters on plabel data."""
from __future__ import annotations

from pathlib import Path

import click

from plabel_kit.commands import PlabelGroup
from plabel_kit.toolkit.runtime import is_main_process


@click.group("segment", cls=PlabelGroup)
def segment():
    """Train, test and apply MMSegmentation segmenters on plabel datasets and label sets.

    \b
    Configs: configs/segmenters/ (DeepLabV3+ R50 for VOC, U-Nets with VGG-16 / ResNet-50
    encoders, tiny CPU variants). Multi-GPU / multi-node: run under torchrun.
    """


def _cfg_options(options, more) -> dict:
    from .config import parse_cfg_options

    return parse_cfg_options([*options, *more])


config_option = click.option("--config", "config", required=True,
                             type=click.Path(dir_okay=False, exists=True),
                             help="mmengine segmenter config (configs/segmenters/*.py).")
launcher_option = click.option("--launcher", type=click.Choice(["none", "pytorch", "slurm", "mpi"]),
                               default=None, help="mmengine launcher (default: pytorch under a "
                                                  "multi-process torchrun, else none).")
cfg_options_option = click.option("--cfg-options", "cfg_options", multiple=True, metavar="KEY=VALUE",
                                  help="mmengine config override, e.g. --cfg-options "
                                       "train_dataloader.batch_size=8 default_hooks.checkpoint.interval=500 "
                                       "(further KEY=VALUE arguments are taken too).")
more_options_argument = click.argument("more_cfg_options", nargs=-1, metavar="[KEY=VALUE]...")


def checkpoint_and_data_options(data_help: str):
    """``--checkpoint`` (trained weights), ``--data`` (described by ``data_help``) and
    ``--split``: what ``segment test`` and ``segment predict`` read."""
    def decorate(f):
        f = click.option("--split", default=None, help="Split of a VOC root (default train).")(f)
        f = click.option("--data", required=True, type=click.Path(exists=True), help=data_help)(f)
        return click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
                            help="Trained weights (a work dir's iter_N.pth).")(f)

    return decorate


@segment.command()
@config_option
@click.option("--data", required=True, type=click.Path(exists=True),
              help="Training images: CSV index or VOC root.")
@click.option("--split", default=None, help="Split of a VOC root (default train).")
@click.option("--labels", type=click.Path(exists=True, file_okay=False),
              help="Label set for --data's images (default: their ground-truth masks).")
@click.option("--manual", type=click.Path(exists=True),
              help="Manually labelled dataset (its masks) mixed in; its ids replace --data's.")
@click.option("--manual-split", default=None, help="Split of a VOC root given as --manual.")
@click.option("--val", type=click.Path(exists=True), help="Validate on this dataset's masks.")
@click.option("--val-split", default=None, help="Split of a VOC root given as --val.")
@click.option("--work", required=True, type=click.Path(file_okay=False),
              help="Work dir: checkpoints, logs, vis_data/scalars.json.")
@click.option("--iters", type=click.IntRange(min=1), help="Iterations (the LR schedule follows).")
@click.option("--pretrained", type=click.Path(exists=True, dir_okay=False),
              help="Local checkpoint for the encoder (nothing is downloaded).")
@click.option("--resume", is_flag=True, help="Continue from the work dir's last checkpoint.")
@click.option("--amp", is_flag=True, help="Automatic mixed precision (GPU).")
@launcher_option
@cfg_options_option
@more_options_argument
def train(config, data, split, labels, manual, manual_split, val, val_split, work, iters,
          pretrained, resume, amp, launcher, cfg_options, more_cfg_options):
    """Train a segmenter on pseudo labels (plus manual labels, seed 000's Table 1 mixes).

    \b
    Examples:
      plabel segment train --config configs/segmenters/unet-vgg16_tiny-cpu-64x64.py \\
          --data scenes/index.csv --labels ls_cam --work work/unet
      plabel segment train --config configs/segmenters/unet-vgg16_4xb4-20k_plabel-512x512.py \\
          --data unlabelled.csv --labels ls_seqmerge --manual annotated.csv --work work/vgg
      torchrun --nproc-per-node 4 $(which plabel) segment train ... (multi-GPU)
    """
    from . import api

    work_dir = api.train(config, data=data, labels=labels, manual=manual, split=split,
                         manual_split=manual_split, val=val, val_split=val_split, work=work,
                         iters=iters, pretrained=pretrained, resume=resume, amp=amp,
                         cfg_options=_cfg_options(cfg_options, more_cfg_options), launcher=launcher)
    if is_main_process():
        last = work_dir / "last_checkpoint"
        click.echo(f"checkpoint: {last.read_text().strip() if last.is_file() else '-'}")


@segment.command()
@config_option
@checkpoint_and_data_options("Test images with ground-truth masks: CSV index or VOC root.")
@click.option("--work", type=click.Path(file_okay=False), help="Log folder (default: the checkpoint's).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the scores here.")
@launcher_option
@cfg_options_option
@more_options_argument
def test(config, checkpoint, data, split, work, json_path, launcher, cfg_options, more_cfg_options):
    """Score a trained segmenter on ground truth: per-class IoU, mIoU, fwIoU, pixel accuracy.

    Example: plabel segment test --config CFG --checkpoint work/unet/iter_60.pth --data val.csv
    """
    from . import api

    metrics = api.test(config, checkpoint, data=data, split=split, work=work, launcher=launcher,
                       cfg_options=_cfg_options(cfg_options, more_cfg_options))
    if not is_main_process():
        return
    from rich.console import Console

    Console().print(_table(metrics, f"{Path(checkpoint).name} on {data}"))
    if json_path:
        Path(json_path).write_text(api.metrics_json(metrics))


def _table(metrics: dict, title: str):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for key, value in metrics.items():
        if key.startswith("IoU."):
            table.add_row(key[4:], "-" if value != value else f"{value:.2f}")  # NaN: class absent
    table.add_section()
    for key, name in (("mIoU", "mIoU"), ("fwIoU", "fwIoU"), ("aAcc", "pixel accuracy")):
        table.add_row(name, f"{metrics[key]:.2f}")
    return table


@segment.command()
@config_option
@checkpoint_and_data_options("Images to label: CSV index or VOC root.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Label set folder to write (resumes if it exists).")
@click.option("--scores", is_flag=True, help="Also save softmax scores (scores/<id>.npz).")
@click.option("--scores-stride", default=4, show_default=True, type=click.IntRange(min=1),
              help="Scores are saved at 1/stride of the image size.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
def predict(config, checkpoint, data, split, out, scores, scores_stride, device):
    """Label a dataset with a trained segmenter: a label set for evaluation or another round.

    Same as `plabel source segmenter --model-config CFG --checkpoint CK`; under torchrun each
    rank labels its share of the images.

    Example: plabel segment predict --config CFG --checkpoint work/unet/iter_60.pth \\
        --data scenes/index.csv --out ls_unet --scores
    """
    from plabel_kit import open_dataset
    from plabel_kit.plugins import get_registry
    from plabel_kit.progress import quiet
    from plabel_kit.stages import run_source

    source = get_registry().build("label_source", {
        "type": "segmenter", "model_config": str(Path(config).resolve()),
        "checkpoint": str(Path(checkpoint).resolve()), "scores": scores,
        "scores_stride": scores_stride, "device": device})
    manifest = run_source(source, open_dataset(data, split), out, progress=not quiet())
    counts = manifest.get("counts")
    if counts:
        click.echo(f"{out}: {counts['labels']} labels, {counts['scores']} score maps")
