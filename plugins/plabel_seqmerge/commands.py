"""``plabel sequence build|show|tasks|simulate-annotations``."""
from __future__ import annotations

import json
from pathlib import Path

import click

from plabel_kit.commands import PlabelGroup, data_options, parse_overrides


@click.group("sequence", cls=PlabelGroup)
def sequence():
    """Sequence evolving images, annotate one image per sequence, merge with CAM (seed 000).

    \b
    Workflow:
      plabel sequence build --data D --out SEQ.json
      plabel sequence show SEQ.json --data D
      plabel sequence tasks SEQ.json --data D --out TASKS      (annotate TASKS/images)
      plabel source cam --data D --out LS_CAM
      plabel source seqmerge --data D --sequences SEQ.json --annotations ANN --cam LS_CAM --out LS
    """


def _quiet() -> bool:
    from plabel_kit.progress import quiet

    return quiet()


def _dataset(data, split):
    from plabel_kit import open_dataset

    return open_dataset(data, split)


@sequence.command()
@data_options
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Sequences file to write (JSON).")
@click.option("--embedder", default="thumbnail", show_default=True,
              help="Embedder (see `plabel components --kind embedder`).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Embedder parameter, repeatable (backbone: --set pretrained=resnet50.pth; "
                   "cam_features: --set checkpoint=LS_CAM/work/cam_final.pth).")
@click.option("--pca", default=256, show_default=True, help="PCA dimensions (SChISM: 256; 0 = off; capped at min(N, D)).")
@click.option("--pca-fit", type=click.Choice(["subject", "all"]), default="subject", show_default=True,
              help="Fit PCA on each subject's images alone (SChISM; N = the subject's images) or once "
                   "on all images.")
@click.option("--window", default=3, show_default=True, help="Observed days per sliding window.")
@click.option("--ratio", default=0.99, show_default=True, help="Link threshold: ratio x best similarity ...")
@click.option("--running-mean/--no-running-mean", default=True, show_default=True,
              help="... or the running mean of best similarities, whichever is higher.")
@click.option("--by", type=click.Choice(["similarity", "subject"]), default="similarity", show_default=True,
              help="similarity: SChISM; subject: one sequence per subject (a video's clip), representative "
                   "its middle image (embedder, PCA, window and ratio are not used).")
@click.option("--split-gap", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="With --by subject: start a new sequence where the time step exceeds this many times "
                   "the subject's median step (0 = never).")
def build(data, split, out, embedder, overrides, pca, pca_fit, window, ratio, running_mean, by, split_gap):
    """Find sequences of similar images per subject (SChISM) and write SEQ.json.

    Images need ``subject`` and ``time`` (ISO 8601, or a number of days) columns; those
    without stay unsequenced and are reported.

    Example: plabel sequence build --data evolving/index.csv --out seq.json
    ImageNet ResNet-50 (SChISM): ... --embedder backbone --set pretrained=resnet50.pth
    Video clips: plabel sequence build --data video/index.csv --by subject --out seq.json
    """
    from plabel_kit.plugins import get_registry

    from .seqfile import build_sequences, build_subject_sequences, sequence_params, write_json_atomic

    try:
        params = sequence_params(pca, window, ratio, running_mean, pca_fit)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    dataset = _dataset(data, split)
    component = (get_registry().build("embedder", {"type": embedder, **parse_overrides(overrides)})
                 if by == "similarity" else None)
    from plabel_kit.labelset import exclusive_file

    with exclusive_file(out, "sequences file"):  # one writer at a time: a second one stops at once
        document = (build_sequences(dataset, component, params, progress=not _quiet()) if component is not None
                    else build_subject_sequences(dataset, split_gap))
        write_json_atomic(out, document)
    skipped = {k: v for k, v in document["not_sequenceable"].items() if v}
    for reason, ids in skipped.items():
        click.echo(f"warning: {len(ids)} image(s) have {reason} and stay unsequenced, e.g. {ids[0]}", err=True)
    click.echo(f"{out}: {len(document['sequences'])} sequences over "
               f"{sum(len(s['images']) for s in document['sequences'])} of {len(dataset)} images")


def render_stats(stats: dict) -> list[str]:
    lines = [f"images: {stats['images']}",
             f"sequences: {stats['sequences']} (mean size {stats['mean_size']:.1f}) covering "
             f"{stats['sequenced_images']} images; unsequenced: {stats['unsequenced_images']}"]
    for reason, count in stats["not_sequenceable"].items():
        if count:
            lines.append(f"  of which {count} with {reason}")
    histogram = ", ".join(f"{bucket}: {count}" for bucket, count in stats["size_histogram"].items())
    lines.append(f"sequence sizes: {histogram or '-'}")
    lines.append(f"annotations needed: {stats['annotations_needed']} (one per sequence) instead of "
                 f"{stats['images']} images: {100 * stats['effort_saved']:.1f} % fewer; unsequenced "
                 f"images get CAM labels only")
    if "purity" in stats:
        lines.append(f"purity (share of a sequence from its majority subject+view, size-weighted): "
                     f"{100 * stats['purity']:.1f} %")
        lines.append(f"completeness (share of a subject+view's sequenced images in its largest "
                     f"sequence, size-weighted): {100 * stats['completeness']:.1f} %")
    return lines


@sequence.command()
@click.argument("seq_file", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(), help="The dataset, for purity (needs subject and view columns).")
@click.option("--split", default=None, help="Split of a VOC root.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the numbers here.")
def show(seq_file, data, split, json_path):
    """Counts, sequence sizes, annotations needed vs images, purity.

    Example: plabel sequence show seq.json --data evolving/index.csv
    """
    from .seqfile import check_against, describe, read_sequences

    document = read_sequences(seq_file)
    dataset = _dataset(data, split) if data else None
    if dataset is not None:
        check_against(document, dataset, seq_file)
    stats = describe(document, dataset)
    for line in render_stats(stats):
        click.echo(line)
    if json_path:
        Path(json_path).write_text(json.dumps(stats, indent=2))


@sequence.command()
@click.argument("seq_file", type=click.Path(dir_okay=False))
@data_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Task folder to write.")
@click.option("--pick", type=click.Choice(["medoid", "first", "middle"]), default="medoid", show_default=True,
              help="Which image of each sequence to annotate.")
def tasks(seq_file, data, split, out, pick):
    """Write OUT/tasks.csv (sequence, id, image) and copy the images to annotate to OUT/images.

    Annotations come back in one folder as <id>.png (class ids, 255 = ignore) or LabelMe
    <id>.json (class names as labels). Example:
    plabel sequence tasks seq.json --data evolving/index.csv --out tasks
    """
    from .annotations import write_tasks
    from .seqfile import check_against, read_sequences

    document = read_sequences(seq_file)
    dataset = _dataset(data, split)
    check_against(document, dataset, seq_file)
    from plabel_kit.labelset import exclusive_folder

    with exclusive_folder(out, "task folder"):
        path = write_tasks(document, dataset, out, pick)
    click.echo(f"{path}: {len(document['sequences'])} images to annotate")


@sequence.command("simulate-annotations")
@click.argument("tasks_folder", type=click.Path(file_okay=False))
@data_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Annotation folder to write.")
@click.option("--format", "fmt", type=click.Choice(["png", "labelme"]), default="png", show_default=True)
def simulate_annotations(tasks_folder, data, split, out, fmt):
    """Write the ground-truth masks of the task images as annotations (a simulated annotator).

    Example: plabel sequence simulate-annotations tasks --data evolving/index.csv --out ann
    """
    from .annotations import simulate_annotations as simulate

    from plabel_kit.labelset import exclusive_folder

    with exclusive_folder(out, "annotation folder"):
        count = simulate(tasks_folder, _dataset(data, split), out, fmt)
    click.echo(f"{out}: {count} {fmt} annotations")


@sequence.command("annotated")
@click.argument("tasks_folder", type=click.Path(file_okay=False))
@click.option("--annotations", required=True, metavar="DIR|ground-truth",
              help="Folder of annotations (<id>.png or LabelMe <id>.json); 'ground-truth' simulates the "
                   "annotator with the dataset's masks (demos, tests).")
@data_options
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder to write: index.csv, others.csv, classes.json, masks/.")
def annotated(tasks_folder, annotations, data, split, out):
    """The annotated task images as a dataset whose masks are the annotations (OUT/index.csv:
    seed 000's manual labels, `plabel segment train --manual`), and the dataset's other
    images (OUT/others.csv: those the pseudo labels are for). OUT/masks/ is an annotation
    folder for the seqmerge source.

    Tasks whose annotation is missing are reported and go to others.csv. Example:
    plabel sequence annotated tasks --annotations ann --data evolving/index.csv --out manual
    """
    from .annotations import GROUND_TRUTH, write_annotated_dataset

    if annotations != GROUND_TRUTH and not Path(annotations).is_dir():
        raise click.BadParameter(f"{annotations}: no such folder (or 'ground-truth' to simulate the annotator)",
                                 param_hint="--annotations")
    from plabel_kit.labelset import exclusive_folder

    with exclusive_folder(out, "annotated dataset folder"):
        index, missing = write_annotated_dataset(tasks_folder, annotations, _dataset(data, split), out)
    if missing:
        click.echo(f"warning: {len(missing)} task image(s) have no annotation yet and are left out, "
                   f"e.g. {missing[0]}", err=True)
    click.echo(f"{index}: manual labels of the annotated images")
