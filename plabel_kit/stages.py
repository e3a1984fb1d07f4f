"""Running one stage (source, refiner, combiner) over a dataset into a label set.

Finished ids are skipped (resume). Under ``torchrun`` each rank takes ids[rank::world].
A component that fails with anything but a :class:`PlabelError` stops the stage with one
line naming it and the image ids it was given; the traceback goes to ``<out>/error.log``
(``error.rank<r>.log`` under torchrun) and to the screen with ``plabel --debug``.
"""
from __future__ import annotations

import atexit
import traceback
from pathlib import Path
from typing import Sequence

from . import __version__
from .datasets import Dataset
from .errors import ComponentError, DataError, LabelSetError, PlabelError
from .interfaces import Combiner, Component, LabelSource, Refiner
from .labelset import LabelSet, LabelSetWriter, dataset_record
from .progress import track
from .toolkit.runtime import barrier, local_rank, shard
from .types import PseudoLabel


def init_distributed():
    """Join torchrun's process group (gloo on CPU, nccl on GPU) when there is more than one rank."""
    if shard()[1] == 1:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend)
        # leave the group before the interpreter tears down: a rank exiting on an error while
        # gloo's threads still run otherwise ends in std::terminate (SIGABRT, not exit 1)
        atexit.register(_leave_process_group)


def _leave_process_group():
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def producer_of(component: Component, inputs: dict | None = None) -> dict:
    """What a manifest records of the component that wrote it: kind, name, configuration,
    runtime parameters, plabel-kit's version and the plugin (name, package, version)."""
    config = component.config()
    runtime = {k: config.pop(k) for k in component.runtime if k in config}
    producer = {"kind": component.kind, "type": component.name, "config": config,
                "runtime": runtime, "version": __version__}
    plugin = plugin_of(component)
    if plugin is not None:
        producer["plugin"] = plugin
    if inputs:
        producer["inputs"] = inputs
    return producer


def plugin_of(component: Component) -> dict | None:
    """``{"name", "package", "version"}`` of the plugin that registered this component's
    class; None for a class registered by no loaded plugin (built in a test or notebook)."""
    from .plugins import get_plugins

    try:
        plugins = get_plugins()
        entry = plugins.registry.entries.get(component.kind, {}).get(component.name)
    except PlabelError:  # a broken third-party plugin: the component itself still runs
        return None
    if entry is None or entry.cls is not type(component):
        return None
    info = plugins.info.get(entry.plugin)
    return {"name": entry.plugin, "package": info.package if info else entry.package,
            "version": info.version if info else ""}


def open_writer(out, dataset: Dataset, producer: dict) -> LabelSetWriter:
    """The stage's writer, holding ``out``'s lock (see :class:`~plabel_kit.labelset.FolderLock`).

    Under torchrun all ranks of one job write one set: rank 0 takes the lock for the job and
    checks the manifest (producer, images) or writes it; every rank waits for its verdict, so
    that no rank writes when it was refused (another writer, another producer, other images).
    A single process and a job, or two jobs, exclude each other through rank 0's lock."""
    rank, world = shard()
    if world == 1:
        return LabelSetWriter(out, producer, dataset.classes, dataset.palette, dataset_record(dataset))
    init_distributed()
    writer, error = None, None
    if rank == 0:
        try:
            writer = LabelSetWriter(out, producer, dataset.classes, dataset.palette, dataset_record(dataset))
        except Exception as exc:  # re-raised below, once every rank knows
            error = exc
    if _any_rank(error is not None):
        if error is not None:
            raise error
        raise LabelSetError(f"{out}: rank 0 could not open this label set (its message says why)")
    if rank != 0:
        writer = LabelSetWriter(out, producer, dataset.classes, dataset.palette,
                                {"source": dataset.source, "split": dataset.split,
                                 "fingerprint": dataset.fingerprint(), "images": len(dataset)}, lock=False)
    return writer


def _call(component: Component, out, samples, method, *args):
    """``method(*args)`` of a component. A PlabelError passes unchanged (already a message for
    the user); any other exception, a bug in the component, becomes one line naming the
    component and the ids of ``samples`` (the batch it was given; none for ``fit``), with
    its traceback written to ``<out>/error.log``."""
    try:
        return method(*args)
    except PlabelError:
        raise
    except Exception as exc:
        if samples:
            ids = [s.id for s in samples]
            shown = ", ".join(repr(i) for i in ids[:5]) + (", ..." if len(ids) > 5 else "")
            where = f"on id {ids[0]!r}" if len(ids) == 1 else f"on a batch of {len(ids)} ids ({shown})"
        else:
            where = f"in {method.__name__}"
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise ComponentError(f"{_title(component)} failed {where}: {type(exc).__name__}: {first_line}; "
                             f"{_log_traceback(out, exc)}") from exc


def _title(component: Component) -> str:
    from .registry import KIND_TITLES

    return f"{KIND_TITLES.get(component.kind, component.kind)} {component.name!r}"


def _log_traceback(out, exc: BaseException) -> str:
    rank, world = shard()
    path = Path(out) / ("error.log" if world == 1 else f"error.rank{rank}.log")
    try:
        path.write_text("".join(traceback.format_exception(exc)))
    except OSError:  # no folder yet (a combiner's fit), disk full, read-only
        return "rerun with `plabel --debug ...` for the traceback"
    return f"traceback in {path} (or rerun with `plabel --debug ...`)"


def _results(component: Component, samples, results) -> list:
    results = list(results)
    if len(results) != len(samples):
        raise ComponentError(f"{_title(component)} returned "
                             f"{len(results)} labels for {len(samples)} images "
                             f"(ids {samples[0].id!r} ... {samples[-1].id!r})")
    return results


def _todo(dataset: Dataset, writer: LabelSetWriter):
    rank, world = shard()
    return [s for s in dataset.samples[rank::world] if not writer.done(s.id)]


def _check_output(sample, pseudo: PseudoLabel, num_classes: int, who: str):
    size = sample.image.shape[:2]
    if pseudo.label.shape != size:
        raise DataError(f"{who} returned a {pseudo.label.shape} label for a {size} image",
                        path=sample.image_path, image_id=sample.id)
    bad = (pseudo.label >= num_classes) & (pseudo.label != 255)
    if bad.any():
        raise DataError(f"{who} returned class id {int(pseudo.label[bad].max())} >= {num_classes}",
                        path=sample.image_path, image_id=sample.id)


def _batches(items: list, size: int) -> list[list]:
    size = max(1, size)
    return [items[i:i + size] for i in range(0, len(items), size)]


def _release(samples):
    """Drop decoded pixels once written: a stage streams, it never holds a dataset."""
    for sample in samples:
        sample._image = sample._mask = None


def _any_rank(flag: bool) -> bool:
    """True when any rank has work: training under DDP needs every rank or none."""
    if shard()[1] == 1:
        return flag
    import torch
    import torch.distributed as dist

    value = torch.tensor([int(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def train_once(checkpoint, final: Path, train) -> Path:
    """The weights a trainable component labels with: ``checkpoint`` when the user gave one,
    else ``final``, made by calling ``train()`` when it does not exist yet (a training that
    checkpoints as it goes resumes inside ``train``). Under torchrun every rank waits here
    until rank 0 has written ``final``."""
    if checkpoint:
        return Path(checkpoint)
    if not Path(final).exists():
        train()
    barrier()
    return Path(final)


def _finish(writer: LabelSetWriter, dataset: Dataset, extra=None) -> dict:
    """Write the manifest once every image is done. ``extra`` (a callable returning a dict)
    is called after every rank has finished labelling, on the rank that writes, so that a
    summary read from the ranks' work files is complete."""
    barrier()
    rank, world = shard()
    if (world == 1 or rank == 0) and all(writer.done(i) for i in dataset.ids):
        manifest = writer.finish(extra() if extra is not None else None)
        for log in (writer.path / "error.log", *writer.path.glob("error.rank*.log")):
            log.unlink(missing_ok=True)  # an earlier failure's traceback, now fixed
        return manifest
    return {}


def run_source(source: LabelSource, dataset: Dataset, out, *, progress: bool = True) -> dict:
    """Fit (trainable sources; checkpoints in ``<out>/work``) and predict every unfinished id."""
    try:
        return _run_source(source, dataset, out, progress)
    finally:
        source.close()


def _run_source(source, dataset, out, progress):
    init_distributed()
    with open_writer(out, dataset, producer_of(source)) as writer:
        todo = _todo(dataset, writer)
        if _any_rank(bool(todo)):
            _call(source, out, None, source.fit, dataset, Path(out) / "work")
        for chunk in track(_batches(todo, source.batch_size), f"{source.name}: labelling", enabled=progress):
            predicted = _results(source, chunk, _call(source, out, chunk, source.predict, chunk))
            for sample, pseudo in zip(chunk, predicted):
                _check_output(sample, pseudo, dataset.num_classes, f"label source {source.name!r}")
                writer.write(sample.id, pseudo)
            _release(chunk)
        return _finish(writer, dataset, lambda: {"summary": source.summary()})


def _input_record(label_set: LabelSet) -> dict:
    return {"path": str(label_set.path.resolve()), "producer": label_set.producer}


def _check_classes(label_set: LabelSet, dataset: Dataset):
    if label_set.classes != dataset.classes:
        raise LabelSetError(f"{label_set.path}: classes {label_set.classes} differ from the "
                            f"dataset's {dataset.classes}")


def _read_input(label_set: LabelSet, sample) -> PseudoLabel:
    if sample.id not in label_set:
        raise DataError(f"no label for this image in {label_set.path}",
                        path=label_set.label_path(sample.id), image_id=sample.id)
    return label_set.read(sample.id, size=sample.image.shape[:2])


def run_refiner(refiner: Refiner, dataset: Dataset, labels: LabelSet, out, *,
                progress: bool = True) -> dict:
    try:
        return _run_refiner(refiner, dataset, labels, out, progress)
    finally:
        refiner.close()


def _run_refiner(refiner, dataset, labels, out, progress):
    _check_classes(labels, dataset)
    init_distributed()
    with open_writer(out, dataset, producer_of(refiner, {"labels": _input_record(labels)})) as writer:
        todo = _todo(dataset, writer)
        if _any_rank(bool(todo)):
            _call(refiner, out, None, refiner.fit, dataset, labels, Path(out) / "work")
        for chunk in track(_batches(todo, refiner.batch_size), f"{refiner.name}: refining", enabled=progress):
            inputs = [_read_input(labels, s) for s in chunk]
            refined = _results(refiner, chunk, _call(refiner, out, chunk, refiner.refine_batch, chunk, inputs))
            for sample, pseudo in zip(chunk, refined):
                _check_output(sample, pseudo, dataset.num_classes, f"refiner {refiner.name!r}")
                writer.write(sample.id, pseudo)
            _release(chunk)
        return _finish(writer, dataset, lambda: {"summary": refiner.summary()})


def run_combiner(combiner: Combiner, dataset: Dataset, label_sets: Sequence[LabelSet], out, *,
                 labelled: Dataset | None = None, progress: bool = True) -> dict:
    try:
        return _run_combiner(combiner, dataset, label_sets, out, labelled, progress)
    finally:
        combiner.close()


def _same_images(labelled: Dataset, dataset: Dataset):
    """An id in both datasets must name the same image file: otherwise the label sets' labels
    of that id (made for ``dataset``) would be scored against another image's ground truth."""
    for sample in labelled.samples:
        if sample.id in dataset:
            ours = dataset[sample.id].image_path
            if Path(sample.image_path).resolve() != Path(ours).resolve():
                raise DataError(f"this labelled image has the id of another image of the dataset being "
                                f"combined ({ours}); a labelled subset must hold the labelled images' own "
                                f"ids", path=sample.image_path, image_id=sample.id)


def _run_combiner(combiner, dataset, label_sets, out, labelled, progress):
    for label_set in label_sets:
        _check_classes(label_set, dataset)
    if labelled is not None:
        _same_images(labelled, dataset)
        _call(combiner, out, None, combiner.fit, label_sets, labelled)
    inputs = {"labels": [_input_record(s) for s in label_sets]}
    if labelled is not None:
        inputs["labelled"] = {"source": labelled.source, "fingerprint": labelled.fingerprint()}
    with open_writer(out, dataset, producer_of(combiner, inputs)) as writer:
        todo = _todo(dataset, writer)
        for sample in track(todo, f"{combiner.name}: combining", enabled=progress):
            pseudo = _call(combiner, out, [sample], combiner.combine, sample,
                           [_read_input(s, sample) for s in label_sets])
            _check_output(sample, pseudo, dataset.num_classes, f"combiner {combiner.name!r}")
            writer.write(sample.id, pseudo)
            _release([sample])
        return _finish(writer, dataset, lambda: {"summary": combiner.summary()})
