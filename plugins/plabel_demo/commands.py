"""``plabel demo``: synthesize evolving subjects, run the seed 000 pipeline, print Table 1."""
from __future__ import annotations

from pathlib import Path

import click

from plabel_kit.commands import GroupCommandRunner


def shipped_configs() -> Path:
    """The repository's configs/ folder (plabel is installed editable, as the README says)."""
    return Path(__file__).resolve().parents[2] / "configs"


@click.command()
@click.option("--out", default="demo_out", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the data, the pipeline's work dir and the report.")
@click.option("--n", default=240, show_default=True, type=click.IntRange(min=60),
              help="Synthetic training images (a test set of half as many is made too).")
@click.option("--size", default=64, show_default=True, type=click.IntRange(min=32), help="Image side in pixels.")
@click.option("--iters", type=click.IntRange(min=1), help="Segmenter iterations (default: the pipeline's).")
@click.pass_context
def demo(ctx, out, n, size, iters):
    """Seed 000 end to end on synthetic data: evolving subjects, sequences, one simulated
    annotation per sequence, CAM, sequence merge, U-Nets (VGG-16 and ResNet-50 encoders)
    trained on each Table 1 row, the table, and an HTML report. Rerun to resume.

    Example: plabel demo --out demo_out    (about 10 minutes on 2 CPU cores)
    """
    from plabel_kit.pipeline import Runner, load_pipeline
    from plabel_kit.progress import quiet
    from plabel_kit.synth import make_evolving

    out = Path(out)
    progress = not quiet()
    data, test = out / "data" / "index.csv", out / "test" / "index.csv"
    if not data.is_file():
        make_evolving(data.parent, n=n, size=size, seed=0, progress=progress)
    if not test.is_file():
        make_evolving(test.parent, n=n // 2, size=size, seed=1, progress=progress)
    overrides = {"test_data": str(test.resolve())}
    if iters is not None:
        overrides["seg_iters"] = iters
    pipeline = load_pipeline(shipped_configs() / "pipelines" / "evolving_seqmerge_small.py", overrides)
    plabel = ctx.find_root().command  # the pipeline's command stages run `plabel sequence/segment ...`
    Runner(pipeline, data.resolve(), out / "work", progress=progress, echo=click.echo,
           commands=GroupCommandRunner(plabel)).run()
    click.echo(f"report: {out / 'work' / 'report' / 'index.html'}")
