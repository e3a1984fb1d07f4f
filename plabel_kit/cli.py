"""The ``plabel`` command line. Runtime failures: one line, exit code 1."""
from __future__ import annotations

import inspect
import json
import os
import sys
from pathlib import Path

import click

from . import __version__
from .commands import (GroupCommandRunner, PlabelGroup, config_option, data_options, out_option, parse_overrides,
                       set_option)
from .errors import PlabelError
from .interfaces import KINDS
from .hookspecs import REGISTER_HOOKS
from .registry import KIND_PLURALS, KIND_TITLES, did_you_mean


def _dataset(data, split):
    from .datasets import open_dataset

    return open_dataset(data, split)


def _console():
    from rich.console import Console

    return Console()


def _quiet() -> bool:
    from .progress import quiet

    return quiet()


# ---- root ----------------------------------------------------------------------------

@click.group(cls=PlabelGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="plabel")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--debug", is_flag=True, help="Print the traceback of an error (a component's is also in <out>/error.log).")
def cli(quiet, debug):
    """plabel: pseudo labels for weakly supervised semantic segmentation.

    \b
    Try it:
      plabel synth scenes /tmp/scenes --n 40
      plabel source whole_image --data /tmp/scenes/index.csv --out /tmp/ls_whole
      plabel evaluate --data /tmp/scenes/index.csv --labels /tmp/ls_whole
    """
    if quiet:
        os.environ["PLABEL_QUIET"] = "1"


# ---- synthetic data ------------------------------------------------------------------

@cli.group(cls=PlabelGroup)
def synth():
    """Generate synthetic datasets with exact masks (deterministic)."""


def synth_options(default_n):
    def decorate(f):
        f = click.option("--seed", default=0, show_default=True, help="Random seed.")(f)
        # the generators' own lower bounds, as argument errors instead of a traceback
        f = click.option("--size", default=128, show_default=True, type=click.IntRange(min=48),
                         help="Image side in pixels.")(f)
        f = click.option("--n", default=default_n, show_default=True, type=click.IntRange(min=0),
                         help="Number of images.")(f)
        return click.argument("out", type=click.Path(file_okay=False))(f)

    return decorate


def _synth_images_command(name: str, default_n: int, generator: str, written: str, doc: str):
    """``plabel synth NAME OUT --n --size --seed``: ``plabel_kit.synth.<generator>`` writes
    OUT; the command prints ``wrote N <written>: <index>``."""

    @synth.command(name, help=doc)
    @synth_options(default_n)
    def command(out, n, size, seed):
        from . import synth as generators

        index = getattr(generators, generator)(out, n=n, size=size, seed=seed, progress=not _quiet())
        click.echo(f"wrote {n} {written}: {index}")

    return command


synth_scenes = _synth_images_command(
    "scenes", 200, "make_scenes", "scenes",
    """Multi-class scenes of textured shapes: OUT/index.csv, classes.json, images/, masks/.

    Example: plabel synth scenes /tmp/scenes --n 60
    """)
synth_evolving = _synth_images_command(
    "evolving", 300, "make_evolving", "evolving images",
    """Subjects photographed over many days while they change (subject, time, view columns).

    Example: plabel synth evolving /tmp/e --n 60
    """)


@synth.command("video")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--clips", default=8, show_default=True, type=click.IntRange(min=0), help="Number of clips.")
@click.option("--frames", default=32, show_default=True, type=click.IntRange(min=0), help="Frames per clip.")
@click.option("--size", default=160, show_default=True, type=click.IntRange(min=48),
              help="Longer side of a frame in pixels (frames are 16:9).")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
def synth_video(out, clips, frames, size, seed):
    """Video clips with real motion and a mask per frame (subject = clip, time, frame columns):
    a panning camera over a textured background, objects that move, turn, bend and occlude.

    Example: plabel synth video /tmp/v --clips 4 --frames 24
    """
    from .synth import make_video

    index = make_video(out, clips=clips, frames=frames, size=size, seed=seed, progress=not _quiet())
    click.echo(f"wrote {clips} clips of {frames} frames: {index}")


# ---- data ----------------------------------------------------------------------------

@cli.command()
@data_options
@click.option("--confine", is_flag=True,
              help="Refuse image and mask paths that lead outside the CSV's folder.")
def check(data, split, confine):
    """Decode every image and mask of a dataset; report the first problem, then what was
    converted on loading (16-bit, EXIF orientation) and paths outside the dataset folder.

    Example: plabel check --data /tmp/scenes/index.csv --confine
    """
    from .datasets import open_dataset

    dataset = open_dataset(data, split, confine=confine)
    report = dataset.validate(progress=not _quiet())
    for line in report.lines():
        click.echo(line)
    click.echo(f"ok: {dataset.describe()}")


@cli.command()
@data_options
@click.option("--labels", "label_sets", required=True, multiple=True, type=click.Path(),
              help="Label set folder; repeat to compare several.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results here.")
@click.option("--sweep", is_flag=True, help="Also sweep background thresholds 0.05..0.80 over score maps.")
@click.option("--strict", is_flag=True, help="Refuse a label set made from other images under the scored ids "
                                             "(default: warn).")
def evaluate(data, split, label_sets, json_path, sweep, strict):
    """Per-class IoU, mIoU, fwIoU, precision and recall of label sets against ground truth.

    Example: plabel evaluate --data /tmp/scenes/index.csv --labels /tmp/ls_whole --sweep
    """
    from .evaluation import evaluate as run_evaluation, render_table
    from .labelset import LabelSet

    dataset = _dataset(data, split)
    console = _console()
    results = []
    for path in label_sets:
        result = run_evaluation(dataset, LabelSet(path), sweep=sweep, progress=not _quiet(), strict=strict)
        results.append(result)
        console.print(render_table(result))
        if result["other_images"]:
            other = result["other_images"]
            click.echo(f"warning: {path} was made from other images for {len(other)} of the scored ids, "
                       f"e.g. {other[0]}: its scores are not about this dataset (--strict refuses)", err=True)
        if result["scored_on_selection_images"]:
            console.print(f"[yellow]warning: {result['scored_on_selection_images']} evaluated image(s) "
                          f"were also used to fit {path} (its labelled subset): scores are optimistic[/yellow]")
        if result["missing_labels"]:
            console.print(f"[yellow]{len(result['missing_labels'])} image(s) have no label in "
                          f"{path} and were left out[/yellow]")
        if sweep:
            s = result["sweep"]
            console.print(f"best background threshold {s['best_threshold']:.2f}: "
                          f"mIoU {100 * s['best_miou']:.2f}")
    if json_path:
        payload = results[0] if len(results) == 1 else results
        Path(json_path).write_text(json.dumps(payload, indent=2))


@cli.command("import")
@click.argument("fmt", type=click.Choice(["irn", "puzzle", "psa"]))
@click.argument("src", type=click.Path(file_okay=False))
@data_options
@out_option
@click.option("--threshold", type=float, default=None,
              help="Background threshold for score maps without a background plane (default 0.15).")
@click.option("--strict", is_flag=True,
              help="Refuse score planes of classes an image is not tagged with (default: drop them, warn).")
@click.option("--trust-pickle", is_flag=True,
              help="Dangerous: read files with plain np.load(allow_pickle=True), which executes "
                   "code in the file; only for files you made yourself.")
def import_(fmt, src, data, split, out, threshold, strict, trust_pickle):
    """Import another implementation's .npy score files (IRN, Puzzle-CAM/PNOC/CSRM, PSA).

    Example: plabel import irn irn/result/cam --data VOC2012 --split train --out ls_irn
    """
    from .importers import import_scores

    dataset = _dataset(data, split)
    result = import_scores(fmt, src, dataset, out, threshold=threshold, progress=not _quiet(),
                           strict=strict, trust_pickle=trust_pickle)
    click.echo(f"imported {result['imported']} of {len(dataset)} images into {out}")
    dropped = result["dropped"]
    if dropped["planes"]:
        click.echo(f"warning: dropped {dropped['planes']} score plane(s) of untagged classes in "
                   f"{len(dropped['images'])} image(s), e.g. id {dropped['images'][0]!r} "
                   f"(--strict refuses them)", err=True)
    if result["missing"]:
        click.echo(f"{len(result['missing'])} image(s) had no {fmt} file in {src}, e.g. "
                   f"{result['missing'][0]}", err=True)


# ---- plugins and components ----------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json):
    """List plugins, their packages and versions, and what each registers; flag broken
    plugins (with the reason) and names two plugins registered."""
    from .plugins import get_plugins

    loaded = get_plugins()
    registry = loaded.registry  # fills each plugin's component list
    clashing = {e.plugin for kind in KINDS for entries in registry.clashes[kind].values() for e in entries}
    rows = [{"name": i.name, "package": i.package, "version": i.version, "hooks": i.hooks,
             "components": i.components, "status": "broken" if i.problem else "clash" if i.name in clashing else "ok",
             "problem": i.problem} for i in loaded.all()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="plabel plugins")
    for column in ("plugin", "package", "version", "registers", "status"):
        table.add_column(column)
    for row in rows:
        registered = "; ".join(f"{KIND_PLURALS[k]}: {', '.join(v)}" for k, v in row["components"].items())
        others = [h for h in row["hooks"] if h not in REGISTER_HOOKS]
        registered = "; ".join(filter(None, [registered, ", ".join(others)]))
        table.add_row(row["name"], row["package"], row["version"], registered or "-", row["status"])
    _console().print(table)
    # plain lines, not table cells: the reasons are long and must not be cut
    for row in rows:
        if row["problem"]:
            package = f"{row['package']} {row['version']}".strip()
            click.echo(f"broken: plugin {row['name']!r} ({package}): {row['problem']}")
    for line in registry.clash_messages():
        click.echo(f"clash: {line}")


def _kind_choice(value):
    if value is None:
        return None
    aliases = {k: k for k in KINDS} | {"source": "label_source", "sources": "label_source",
                                       "refiners": "refiner", "combiners": "combiner",
                                       "embedders": "embedder", "affinities": "affinity"}
    if value not in aliases:
        raise click.BadParameter(f"{value!r} is not a kind{did_you_mean(value, aliases)} "
                                 f"(kinds: {', '.join(KINDS)})", param_hint="--kind")
    return aliases[value]


@cli.command()
@click.option("--kind", callback=lambda ctx, p, v: _kind_choice(v), help="label_source, refiner, combiner, embedder, affinity.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def components(kind, as_json):
    """List components: name, kind, plugin and parameters with defaults.

    Example: plabel components --kind label_source
    """
    from .plugins import get_registry
    from .registry import parameters

    registry = get_registry()
    rows = []
    for k in ([kind] if kind else list(KINDS)):
        for name in registry.names(k):
            entries = registry.registrants(k, name)  # two or more: a clash, listed with each plugin
            for entry in entries:
                doc = (entry.cls.__doc__ or "").strip().splitlines()
                rows.append({"name": name, "kind": k, "plugin": entry.plugin, "package": entry.package,
                             "parameters": [{"name": p.name, "type": p.type, "default": p.default,
                                             "required": p.required} for p in parameters(entry.cls)],
                             "summary": doc[0] if doc else "", "clash": len(entries) > 1})
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    from rich.table import Table

    table = Table(title="plabel components")
    for column in ("name", "kind", "plugin", "parameters", "summary"):
        table.add_column(column)
    for row in rows:
        params = ", ".join(f"{p['name']}: {p['type']}" + ("" if p["required"] else f" = {p['default']!r}")
                           for p in row["parameters"])
        table.add_row(row["name"] + (" (clash)" if row["clash"] else ""), KIND_TITLES[row["kind"]], row["plugin"],
                      params or "-", row["summary"])
    _console().print(table)
    for line in registry.clash_messages():
        click.echo(f"clash: {line}")
    for what, why in registry.broken:
        click.echo(f"broken: {what}: {why}")


# ---- running components --------------------------------------------------------------

class ComponentGroup(PlabelGroup):
    """One sub-command per registered component of a kind, built on demand, so that a
    third-party plugin's component gets its command with no extra code."""

    def __init__(self, *args, kind: str, make_command, **kwargs):
        super().__init__(*args, **kwargs)
        self.kind = kind
        self.make_command = make_command

    def list_commands(self, ctx):
        from .plugins import get_registry

        return get_registry().names(self.kind)

    def get_command(self, ctx, name):
        from .plugins import get_registry

        registry = get_registry()
        if name not in registry.entries[self.kind] or name in registry.clashes[self.kind]:
            return None  # a clash is not listed in --help; using it fails in resolve_command
        return self.make_command(registry.entry(self.kind, name))

    def resolve_command(self, ctx, args):
        from .errors import RegistryError
        from .plugins import get_registry

        name = args[0] if args else None
        if name is not None and not name.startswith("-") and self.get_command(ctx, name) is None:
            registry = get_registry()
            if name in registry.clashes[self.kind]:
                registry.entry(self.kind, name)  # raises: names both plugins and packages, and the fix
            try:
                registry.entry(self.kind, name)
            except RegistryError as exc:  # unknown: a usage error, with did-you-mean and broken plugins
                raise click.UsageError(str(exc), ctx) from None
        return super().resolve_command(ctx, args)


def _component_command(entry, extra_params, run, example: str):
    """A click command for one component: shared options, one option per declared input."""
    cls = entry.cls
    doc = inspect.cleandoc(cls.__doc__ or "")
    params = [click.Option([f"--{name.replace('_', '-')}", name], type=click.Path(),
                           help=f"Input: {name} (a component parameter).") for name in cls.inputs]

    def callback(**kwargs):
        from .registry import load_config

        overrides = load_config(kwargs.pop("config_file")) if kwargs.get("config_file") else {}
        kwargs.pop("config_file", None)
        overrides.update(parse_overrides(kwargs.pop("overrides")))
        for name in cls.inputs:
            if kwargs.get(name) is not None:
                overrides[name] = kwargs[name]
            kwargs.pop(name, None)
        from .plugins import get_registry

        component = get_registry().build(entry.cls.kind, {"type": cls.name, **overrides})
        run(component, **kwargs)

    command = click.Command(cls.name, callback=callback, params=params,
                            help=f"{doc}\n\n\b\nExample:\n  {example.format(name=cls.name)}",
                            short_help=doc.splitlines()[0] if doc else None)
    for decorator in reversed(extra_params):
        decorator(command)
    return command


def _report(manifest: dict, out):
    counts = manifest.get("counts")
    if counts:
        click.echo(f"{out}: {counts['labels']} labels, {counts['scores']} score maps")
    else:
        click.echo(f"{out}: this process's share is done")
    for key, value in (manifest.get("summary") or {}).items():
        if isinstance(value, (int, float, str)):
            click.echo(f"  {key}: {value}")


def _attach(options):
    """Apply click option decorators to an existing Command object."""
    def attach(command):
        for option in options:
            option(command)
    return attach


def _make_source_command(entry):
    def run(source, data, split, out):
        from .stages import run_source

        _report(run_source(source, _dataset(data, split), out, progress=not _quiet()), out)

    return _component_command(entry, [_attach([data_options, out_option, config_option, set_option])], run,
                              "plabel source {name} --data scenes/index.csv --out ls_{name}")


def _make_refiner_command(entry):
    def run(refiner, data, split, in_set, out):
        from .labelset import LabelSet
        from .stages import run_refiner

        _report(run_refiner(refiner, _dataset(data, split), LabelSet(in_set), out,
                            progress=not _quiet()), out)

    in_option = click.option("--in", "in_set", required=True, type=click.Path(file_okay=False),
                             help="Label set to refine.")
    return _component_command(entry, [_attach([data_options, in_option, out_option, config_option, set_option])],
                              run, "plabel refine {name} --data scenes/index.csv --in ls_cam --out ls_cam_{name}")


def _make_combiner_command(entry):
    def run(combiner, data, split, in_sets, out, select_on):
        from .labelset import LabelSet
        from .stages import run_combiner

        dataset = _dataset(data, split)
        labelled = _dataset(select_on, None) if select_on else None
        if labelled is not None:
            overlap = set(labelled.ids) & set(dataset.ids)
            if overlap:
                click.echo(f"warning: {len(overlap)} image(s) of --select-on are also being "
                           f"combined; scores on them are optimistic", err=True)
        _report(run_combiner(combiner, dataset, [LabelSet(p) for p in in_sets], out,
                             labelled=labelled, progress=not _quiet()), out)

    in_option = click.option("--in", "in_sets", required=True, multiple=True,
                             type=click.Path(file_okay=False), help="Label set, repeatable.")
    select_option = click.option("--select-on", type=click.Path(),
                                 help="Labelled dataset (CSV index) the combiner learns from.")
    return _component_command(
        entry, [_attach([data_options, in_option, out_option, select_option, config_option, set_option])], run,
        "plabel combine {name} --data scenes/index.csv --in ls_a --in ls_b --out ls_{name}")


cli.add_command(ComponentGroup("source", kind="label_source", make_command=_make_source_command,
                               help="Run a label source: plabel source NAME --data D --out LS."))
cli.add_command(ComponentGroup("refine", kind="refiner", make_command=_make_refiner_command,
                               help="Run a refiner: plabel refine NAME --data D --in LS --out LS2."))
cli.add_command(ComponentGroup("combine", kind="combiner", make_command=_make_combiner_command,
                               help="Run a combiner: plabel combine NAME --data D --in LS1 --in LS2 --out LS."))


# ---- pipelines, report -----------------------------------------------------------------

def _labels_by_title(values) -> dict:
    """``--labels PATH`` or ``--labels TITLE=PATH`` (repeatable) -> {title: path}."""
    labels = {}
    for value in values:
        title, sep, path = value.partition("=")
        if not sep:
            title, path = Path(value).name or value, value
        if title in labels:
            title = f"{title} ({len(labels) + 1})"
        if not Path(path).is_dir():
            raise click.BadParameter(f"{path}: not a label set folder", param_hint="--labels")
        labels[title] = path
    return labels


@cli.command("run")
@click.argument("pipeline", type=click.Path(dir_okay=False, exists=True))
@click.option("--data", required=True, type=click.Path(exists=True),
              help="CSV index or VOC 2012 root (its train split; a stage may set `split`).")
@click.option("--work", required=True, type=click.Path(file_okay=False),
              help="Work dir: one folder per stage, pipeline.log, pipeline.json.")
@click.option("--from", "start", metavar="STAGE", help="Redo STAGE and what reads it (earlier stages must be done).")
@click.option("--to", "stop", metavar="STAGE", help="Stop after STAGE.")
@click.option("--set", "overrides", multiple=True, metavar="STAGE.KEY=VALUE",
              help="Override a stage parameter (cam.epochs=20) or a variable (test_data=PATH); repeatable.")
@click.option("--dry-run", is_flag=True, help="Print what each stage would do, run nothing.")
def run_pipeline(pipeline, data, work, start, stop, overrides, dry_run):
    """Run a pipeline config: stages in order, finished ones skipped, changed ones (and
    everything downstream of them) rerun, interrupted ones resumed.

    \b
    Example:
      plabel synth evolving /tmp/ev --n 120 --size 64
      plabel run configs/pipelines/evolving_seqmerge_small.py --data /tmp/ev/index.csv \\
          --work /tmp/ev_work --set test_data=/tmp/ev/index.csv
    """
    from .pipeline import Runner, load_pipeline

    runner = Runner(load_pipeline(pipeline, parse_overrides(overrides)), data, work, progress=not _quiet(),
                    echo=click.echo, commands=GroupCommandRunner(cli))
    if dry_run:  # the same checks as a run, so a dry run finds what a run would stop on
        for stage, action in runner.check(start, stop):
            click.echo(f"{stage.name:20s} {stage.step:9s} {action}")
        return
    actions = runner.run(start, stop)
    ran = [name for name, action in actions.items() if action not in ("skip", "before", "after")]
    click.echo(f"{work}: {len(ran)} stage(s) run ({', '.join(ran) or 'none'}); log: {Path(work) / 'pipeline.log'}")


@cli.command()
@data_options
@click.option("--labels", "label_sets", required=True, multiple=True, metavar="[TITLE=]PATH",
              help="Label set to show, repeatable; TITLE defaults to the folder name.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report folder (index.html, images/).")
@click.option("--n", default=12, show_default=True, type=click.IntRange(min=1), help="Images shown.")
@click.option("--pipeline", "provenance", type=click.Path(dir_okay=False, exists=True),
              help="A pipeline work dir's pipeline.json, shown as provenance.")
@click.option("--title", default="plabel report", show_default=True)
def report(data, split, label_sets, out, n, provenance, title):
    """Write a static HTML report: overlays of each label set beside the image and its
    ground truth, per-class IoU across label sets, and where each label set came from.

    Example: plabel report --data scenes/index.csv --labels ls_cam --labels ls_crf --out report
    """
    from .report import write_report

    page = write_report(_dataset(data, split), _labels_by_title(label_sets), out, n=n, provenance=provenance,
                        progress=not _quiet(), title=title)
    click.echo(f"report: {page}")


def _load_plugin_commands():
    from .plugins import get_plugins

    get_plugins().add_commands(cli)


def main(argv=None):
    try:
        _load_plugin_commands()
    except PlabelError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    cli.main(args=argv, prog_name="plabel")


if __name__ == "__main__":
    main()
