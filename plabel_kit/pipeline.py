"""Pipelines: named stages run in order under one work dir (``plabel run``).

A pipeline is an mmengine Python config (``configs/pipelines/``) with a list ``stages``;
each stage is a dict with a ``name`` (its folder under the work dir) and a ``step``:

- ``source``: ``type`` and parameters of a label source (``config``: a parameter file whose
  values the stage's own keys override; ``data`` optional);
- ``refine``: ``input`` (a label set) and ``type`` + parameters of a refiner;
- ``combine``: ``inputs``, optional ``select_on`` (a labelled dataset), ``type`` + parameters;
- ``command``: ``run``, one ``plabel`` command line (a list of arguments) or a list of them,
  for steps that plugins add as commands (``plabel sequence ...``, ``plabel segment ...``);
- ``evaluate``: ``labels`` {title: label set} and ``segmenters`` (rows of test scores)
  -> ``results.json`` and a table;
- ``report``: ``labels`` {title: label set} -> an HTML page with overlays (``plabel report``).

In strings, ``{data}``, ``{work}``, ``{out}`` (this stage's folder), ``{config_dir}`` (the
pipeline file's folder) and any top-level variable of the pipeline (e.g. ``{test_data}``)
are substituted, and ``@NAME`` or ``@NAME/sub/path`` names an earlier stage's folder.

Each finished stage records a fingerprint of its resolved dict, the fingerprints of the
stages it reads and of its dataset in ``<work>/<name>/stage.json``. A finished stage with
the same fingerprint is skipped; one whose fingerprint changed (its parameters or anything
upstream) is cleared and run again, and so is everything downstream. An interrupted stage
resumes: label-set stages skip finished images, trainings continue from their checkpoints.
"""
from __future__ import annotations

import ast
import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PlabelError
from .labelset import write_atomic

STEPS = ("source", "refine", "combine", "command", "evaluate", "report")
#: stage keys that belong to the step, not to the component it builds
STEP_KEYS = {"name", "step", "data", "split", "input", "inputs", "select_on", "select_split", "config"}
STATE = "stage.json"
LOG = "pipeline.log"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_REFERENCE = re.compile(r"^@([A-Za-z][A-Za-z0-9_-]*)(/.*)?$")
_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

log = logging.getLogger("plabel.pipeline")


@dataclass
class Stage:
    name: str
    step: str
    spec: dict  # the stage's dict, ``name`` and ``step`` removed
    needs: list[str] = field(default_factory=list)  # earlier stages it reads


@dataclass
class Pipeline:
    path: Path
    stages: list[Stage]
    variables: dict  # top-level names other than ``stages`` (data, test_data, ...)

    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        from .registry import did_you_mean

        raise PlabelError(f"{self.path}: no stage {name!r}{did_you_mean(name, self.names())} "
                          f"(stages: {', '.join(self.names())})")


def _literal(value: str):
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _references(value) -> set[str]:
    if isinstance(value, str):
        match = _REFERENCE.match(value)
        return {match.group(1)} if match else set()
    if isinstance(value, dict):
        return set().union(*(_references(v) for v in value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*(_references(v) for v in value)) if value else set()
    return set()


def load_pipeline(path, overrides: dict | None = None) -> Pipeline:
    """Read a pipeline config; ``overrides`` {"STAGE.KEY": value or "VARIABLE": value}
    (strings are parsed as Python literals where they are ones)."""
    from mmengine.config import Config

    path = Path(path)
    if not path.is_file():
        raise PlabelError(f"{path}: pipeline config not found")
    try:
        cfg = Config.fromfile(str(path)).to_dict()
    except Exception as exc:  # mmengine raises many types for a bad file
        raise PlabelError(f"{path}: cannot read the pipeline config ({type(exc).__name__}: {exc})") from None
    stages_cfg = cfg.pop("stages", None)
    if not isinstance(stages_cfg, list) or not stages_cfg:
        raise PlabelError(f"{path}: a pipeline needs a non-empty list `stages`")
    variables = {k: v for k, v in cfg.items() if not k.startswith("_")}
    stages: list[Stage] = []
    for index, entry in enumerate(stages_cfg):
        if not isinstance(entry, dict) or "name" not in entry or "step" not in entry:
            raise PlabelError(f"{path}: stage {index} needs a `name` and a `step`")
        entry = copy.deepcopy(entry)
        name, step = entry.pop("name"), entry.pop("step")
        if not _NAME.match(str(name)):
            raise PlabelError(f"{path}: stage name {name!r} must be a letter then letters, digits, _ or -")
        if name in [s.name for s in stages]:
            raise PlabelError(f"{path}: two stages are named {name!r}")
        if step not in STEPS:
            raise PlabelError(f"{path}: stage {name!r} has step {step!r}; steps: {', '.join(STEPS)}")
        stages.append(Stage(name, step, entry))
    pipeline = Pipeline(path, stages, variables)
    for key, value in (overrides or {}).items():
        value = _literal(value) if isinstance(value, str) else value
        stage_name, dot, param = key.partition(".")
        if not dot:
            pipeline.variables[key] = value
        else:
            pipeline.stage(stage_name).spec[param] = value
    seen: list[str] = []
    for stage in stages:
        stage.needs = sorted(_references(stage.spec))
        unknown = [n for n in stage.needs if n not in seen]
        if unknown:
            raise PlabelError(f"{path}: stage {stage.name!r} reads @{unknown[0]}, which is not an earlier stage")
        seen.append(stage.name)
    return pipeline


class Runner:
    """Runs a pipeline's stages in order under ``work``; see the module docstring."""

    def __init__(self, pipeline: Pipeline, data, work, *, progress: bool = True, echo=print):
        self.pipeline, self.work = pipeline, Path(work)
        self.variables = {**pipeline.variables, "data": str(data), "work": str(self.work),
                          "config_dir": str(pipeline.path.resolve().parent)}
        self.progress, self.echo = progress, echo
        self.fingerprints: dict[str, str] = {}
        self._datasets: dict = {}

    # ---- resolution ------------------------------------------------------------------

    def resolve(self, value, stage: Stage):
        """Substitute variables and ``@stage`` references in every string of ``value``."""
        if isinstance(value, str):
            match = _REFERENCE.match(value)
            if match:
                return str(self.work / match.group(1)) + (match.group(2) or "")
            variables = {**self.variables, "out": str(self.work / stage.name)}
            whole = _VARIABLE.fullmatch(value)
            if whole and whole.group(1) in variables and variables[whole.group(1)] is None:
                return None  # an optional setting left unset (e.g. config='{irnet_config}')

            def substitute(m, depth=0):
                name = m.group(1)
                if name not in variables or variables[name] is None:
                    raise PlabelError(f"{self.pipeline.path}: stage {stage.name!r} uses {{{name}}}, which is not "
                                      f"set (--set {name}=...; variables: {', '.join(sorted(variables))})")
                if depth > 10:
                    raise PlabelError(f"{self.pipeline.path}: variable {name!r} refers to itself")
                return _VARIABLE.sub(lambda inner: substitute(inner, depth + 1), str(variables[name]))

            return _VARIABLE.sub(substitute, value)
        if isinstance(value, dict):
            return {k: self.resolve(v, stage) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.resolve(v, stage) for v in value]
        return value

    def fingerprint(self, stage: Stage) -> str:
        """Hash of the stage's resolved dict, its inputs' fingerprints and its dataset."""
        spec = self.resolve(stage.spec, stage)
        data = spec.get("data", self.variables["data"])
        payload = {"step": stage.step, "spec": spec, "needs": {n: self.fingerprints[n] for n in stage.needs},
                   "data": self._data_identity(data, spec.get("split")),
                   "config_files": _config_files(spec, self.work)}
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def dataset(self, data, split=None):
        """The dataset at ``data`` (``split`` of a VOC root), opened once per run: a VOC root
        decodes every mask when it opens."""
        from .datasets import open_dataset

        key = (str(data), split)
        if key not in self._datasets:
            self._datasets[key] = open_dataset(data, split)
        return self._datasets[key]

    def _data_identity(self, data, split) -> str:
        """The dataset's ids and classes (as label sets record it); the path for a stage's
        output (its producer's fingerprint is already among the needs) or an unreadable one."""
        if data is None:
            return "unset"
        if Path(data).resolve().is_relative_to(self.work.resolve()):
            return str(data)
        try:
            return self.dataset(data, split).fingerprint()
        except PlabelError:
            return str(data)

    # ---- state -------------------------------------------------------------------------

    def _state(self, stage: Stage) -> dict | None:
        path = self.work / stage.name / STATE
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _write_state(self, stage: Stage, state: dict):
        folder = self.work / stage.name
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / STATE, json.dumps(state, indent=2).encode())

    def _clear(self, stage: Stage):
        folder = self.work / stage.name
        if folder.exists():
            trash = self.work / f".{stage.name}.cleared"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(folder, trash)  # one atomic step, then the slow delete
            shutil.rmtree(trash, ignore_errors=True)

    # ---- running -----------------------------------------------------------------------

    def plan(self, start: str | None = None, stop: str | None = None) -> list[tuple[Stage, str]]:
        """(stage, what happens: "skip" finished, "run", "resume", "rerun" changed, "redo"
        forced by ``start``, "before" or "after" the selected range) for every stage."""
        names = self.pipeline.names()
        first = names.index(self.pipeline.stage(start).name) if start else 0
        last = names.index(self.pipeline.stage(stop).name) if stop else len(names) - 1
        if first > last:
            raise PlabelError(f"--from {start} comes after --to {stop}")
        plan = []
        self.fingerprints = {}
        for index, stage in enumerate(self.pipeline.stages):
            if index > last:  # later stages may need settings this run does not have yet
                plan.append((stage, "after"))
                continue
            self.fingerprints[stage.name] = self.fingerprint(stage)
            state = self._state(stage)
            if index < first:
                plan.append((stage, "before"))
            elif index == first and start:
                plan.append((stage, "redo"))
            elif index > first and start and any(action in ("redo", "rerun") and s.name in stage.needs
                                                 for s, action in plan):
                plan.append((stage, "redo"))
            elif state is None and not (self.work / stage.name).exists():
                plan.append((stage, "run"))
            elif state is not None and state.get("fingerprint") != self.fingerprints[stage.name]:
                plan.append((stage, "rerun"))
            elif state is not None and state.get("status") == "done":
                plan.append((stage, "skip"))
            else:
                plan.append((stage, "resume"))
        return plan

    def run(self, start: str | None = None, stop: str | None = None) -> dict:
        """Run the stages from ``start`` to ``stop``; returns {stage: action taken}."""
        self.work.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.work):
            return self._run_logged(start, stop)

    def _run_logged(self, start, stop) -> dict:
        handler = logging.FileHandler(self.work / LOG)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        loggers = [logging.getLogger("plabel"), logging.getLogger("py.warnings")]
        propagate = loggers[1].propagate
        for logger in loggers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
        loggers[1].propagate = False  # library warnings go to the log, not between the stage lines
        logging.captureWarnings(True)
        try:
            return self._run(start, stop)
        finally:
            logging.captureWarnings(False)
            loggers[1].propagate = propagate
            for logger in loggers:
                logger.removeHandler(handler)
            handler.close()

    def _run(self, start, stop) -> dict:
        log.info("pipeline %s, data %s, work %s", self.pipeline.path, self.variables["data"], self.work)
        actions = {}
        for stage, action in self.plan(start, stop):
            actions[stage.name] = action
            if action in ("before", "after"):
                if action == "before" and (self._state(stage) or {}).get("status") != "done":
                    raise PlabelError(f"--from {start}: the earlier stage {stage.name!r} has not finished; "
                                      f"run without --from first")
                continue
            if action == "skip":
                self.echo(f"[{stage.name}] finished, skipped")
                log.info("[%s] skipped (finished, fingerprint %s)", stage.name, self.fingerprints[stage.name])
                continue
            if action in ("rerun", "redo"):
                self._clear(stage)
            self.echo(f"[{stage.name}] {action}: {stage.step}")
            log.info("[%s] %s: %s %s", stage.name, action, stage.step,
                     json.dumps(self.resolve(stage.spec, stage), default=str))
            fingerprint = self.fingerprints[stage.name]
            started = time.time()
            self._write_state(stage, {"fingerprint": fingerprint, "status": "running", "step": stage.step,
                                      "started": started})
            try:
                result = STEP_RUNNERS[stage.step](self, stage, self.resolve(stage.spec, stage))
            except PlabelError as exc:
                log.error("[%s] failed: %s", stage.name, exc)
                raise
            except Exception as exc:  # one line for the user, the traceback in the log
                log.exception("[%s] failed", stage.name)
                raise PlabelError(f"stage {stage.name!r} failed: {type(exc).__name__}: {exc} "
                                  f"(traceback in {self.work / LOG})") from None
            seconds = time.time() - started
            self._write_state(stage, {"fingerprint": fingerprint, "status": "done", "step": stage.step,
                                      "started": started, "seconds": round(seconds, 2),
                                      "result": result or {}})
            log.info("[%s] done in %.1f s", stage.name, seconds)
            self.echo(f"[{stage.name}] done in {seconds:.1f} s")
        self._write_provenance()
        return actions

    def _write_provenance(self):
        """``<work>/pipeline.json``: the stages as run, their fingerprints and timings."""
        stages = []
        for stage in self.pipeline.stages:
            state = self._state(stage) or {}
            stages.append({"name": stage.name, "step": stage.step, "needs": stage.needs,
                           "spec": self.resolve(stage.spec, stage), "status": state.get("status", "not run"),
                           "fingerprint": state.get("fingerprint"), "seconds": state.get("seconds")})
        document = {"pipeline": str(self.pipeline.path.resolve()), "data": self.variables["data"],
                    "variables": {k: v for k, v in self.variables.items() if isinstance(v, (str, int, float))},
                    "stages": stages}
        write_atomic(self.work / "pipeline.json", json.dumps(document, indent=2, default=str).encode())


@contextlib.contextmanager
def _exclusive(work: Path):
    """Hold ``<work>/.lock`` while running: a second ``plabel run`` on the same work dir
    stops at once instead of writing into the same stages (the lock dies with its process)."""
    import fcntl

    with open(work / ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise PlabelError(f"{work}: another plabel run (pid {holder}) is using this work dir") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _config_files(value, work: Path) -> dict:
    """{path: sha256} of every config file (.py / .json) a resolved stage names outside the
    work dir (files in there are stages' outputs), with their ``_base_`` files: editing a
    config reruns the stages that use it."""
    found = {}
    if isinstance(value, str) and value.endswith((".py", ".json")) and Path(value).is_file() \
            and not Path(value).resolve().is_relative_to(work.resolve()):
        path = Path(value).resolve()
        text = path.read_bytes()
        found[str(path)] = hashlib.sha256(text).hexdigest()[:16]
        if path.suffix == ".py":
            for base in re.findall(r"['\"]([^'\"]+\.py)['\"]", text.decode(errors="replace")):
                found.update(_config_files(str(path.parent / base), work))
    elif isinstance(value, dict):
        for item in value.values():
            found.update(_config_files(item, work))
    elif isinstance(value, (list, tuple)):
        for item in value:
            found.update(_config_files(item, work))
    return found



# ---- steps -------------------------------------------------------------------------------

def _component(stage: Stage, kind: str, spec: dict):
    from .plugins import get_registry

    from .registry import load_config

    config = load_config(spec["config"]) if spec.get("config") else {}
    config.update({k: v for k, v in spec.items() if k not in STEP_KEYS})
    if "type" not in config:
        raise PlabelError(f"stage {stage.name!r}: a {stage.step} stage needs `type` (the component's name)")
    return get_registry().build(kind, config)


def _stage_data(runner: Runner, spec: dict):
    return runner.dataset(spec.get("data", runner.variables["data"]), spec.get("split"))


def _manifest_result(manifest: dict) -> dict:
    return {"counts": manifest.get("counts", {})}


def run_source_step(runner: Runner, stage: Stage, spec: dict) -> dict:
    from .stages import run_source

    out = runner.work / stage.name
    return _manifest_result(run_source(_component(stage, "label_source", spec), _stage_data(runner, spec), out,
                                       progress=runner.progress))


def run_refine_step(runner: Runner, stage: Stage, spec: dict) -> dict:
    from .labelset import LabelSet
    from .stages import run_refiner

    if "input" not in spec:
        raise PlabelError(f"stage {stage.name!r}: a refine stage needs `input` (a label set, e.g. '@cam')")
    return _manifest_result(run_refiner(_component(stage, "refiner", spec), _stage_data(runner, spec),
                                        LabelSet(spec["input"]), runner.work / stage.name,
                                        progress=runner.progress))


def run_combine_step(runner: Runner, stage: Stage, spec: dict) -> dict:
    from .datasets import open_dataset
    from .labelset import LabelSet
    from .stages import run_combiner

    if not spec.get("inputs"):
        raise PlabelError(f"stage {stage.name!r}: a combine stage needs `inputs` (label sets)")
    labelled = open_dataset(spec["select_on"], spec.get("select_split")) if spec.get("select_on") else None
    return _manifest_result(run_combiner(_component(stage, "combiner", spec), _stage_data(runner, spec),
                                         [LabelSet(p) for p in spec["inputs"]], runner.work / stage.name,
                                         labelled=labelled, progress=runner.progress))


def run_command_step(runner: Runner, stage: Stage, spec: dict) -> dict:
    """``plabel`` command lines, in this process (one after another)."""
    import click

    from .cli import cli

    lines = spec.get("run")
    if not lines:
        raise PlabelError(f"stage {stage.name!r}: a command stage needs `run` (plabel arguments)")
    raw = stage.spec["run"]
    if all(isinstance(a, str) or a is None for a in lines):
        lines, raw = [lines], [raw]
    for args, raw_args in zip(lines, raw):
        unset = [r for a, r in zip(args, raw_args) if a is None]
        if unset:
            raise PlabelError(f"stage {stage.name!r} needs {unset[0]} (set it with --set "
                              f"{unset[0].strip('{}')}=...)")
    (runner.work / stage.name).mkdir(parents=True, exist_ok=True)
    for args in lines:
        args = [str(a) for a in args]
        log.info("[%s] plabel %s", stage.name, " ".join(args))
        try:
            # what the command prints goes to the log; the console keeps the stage lines
            with open(runner.work / LOG, "a") as printed, contextlib.redirect_stdout(printed):
                cli.main(args=args, prog_name="plabel", standalone_mode=False)
        except click.exceptions.Exit as exc:
            if exc.exit_code:
                raise PlabelError(f"stage {stage.name!r}: `plabel {' '.join(args)}` exited with {exc.exit_code}")
        except click.ClickException as exc:
            raise PlabelError(f"stage {stage.name!r}: `plabel {' '.join(args[:2])} ...`: {exc.format_message()}") \
                from None
    return {"commands": len(lines)}


def run_evaluate_step(runner: Runner, stage: Stage, spec: dict) -> dict:
    """Label sets scored on the stage's data, segmenters' test scores gathered in rows."""
    from .evaluation import evaluate
    from .labelset import LabelSet

    dataset = _stage_data(runner, spec)
    results = {"labels": {}, "segmenters": []}
    for title, path in (spec.get("labels") or {}).items():
        scored = evaluate(dataset, LabelSet(path), progress=runner.progress)
        results["labels"][title] = {"miou": scored["miou"], "fwiou": scored["fwiou"], "path": path,
                                    "iou": {row["name"]: row["iou"] for row in scored["classes"]}}
    for row in spec.get("segmenters") or []:
        scores_path = Path(row["scores"])
        try:
            scores = json.loads(scores_path.read_text())
        except FileNotFoundError:
            raise PlabelError(f"stage {stage.name!r}: no test scores at {scores_path}") from None
        results["segmenters"].append({**{k: v for k, v in row.items() if k != "scores"},
                                      "miou": scores["mIoU"] / 100, "fwiou": scores["fwIoU"] / 100})
    out = runner.work / stage.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    text = render_results(results, spec.get("title", "results"))
    (out / "results.md").write_text(text + "\n")
    runner.echo(text)
    return {"results": str(out / "results.json")}


def render_results(results: dict, title: str) -> str:
    """A Markdown table of label-set scores and one of segmenter rows (seed 000's Table 1)."""
    lines = [f"## {title}", ""]
    if results.get("labels"):
        lines += ["| pseudo labels | mIoU | fwIoU |", "|---|---:|---:|"]
        lines += [f"| {t} | {100 * r['miou']:.2f} | {100 * r['fwiou']:.2f} |" for t, r in results["labels"].items()]
        lines.append("")
    rows = results.get("segmenters") or []
    if rows:
        extra = [k for k in rows[0] if k not in ("miou", "fwiou")]
        lines += ["| " + " | ".join(extra) + " | mIoU | fwIoU |", "|" + "---|" * len(extra) + "---:|---:|"]
        lines += ["| " + " | ".join(str(r.get(k, "")) for k in extra)
                  + f" | {100 * r['miou']:.2f} | {100 * r['fwiou']:.2f} |" for r in rows]
    return "\n".join(lines).rstrip()


def run_report_step(runner: Runner, stage: Stage, spec: dict) -> dict:
    from .report import write_report

    labels = spec.get("labels") or {}
    runner._write_provenance()
    if not labels:
        raise PlabelError(f"stage {stage.name!r}: a report stage needs `labels` {{title: label set}}")
    page = write_report(_stage_data(runner, spec), labels, runner.work / stage.name, n=int(spec.get("n", 12)),
                        provenance=runner.work / "pipeline.json", progress=runner.progress)
    return {"page": str(page)}


STEP_RUNNERS = {"source": run_source_step, "refine": run_refine_step, "combine": run_combine_step,
                "command": run_command_step, "evaluate": run_evaluate_step, "report": run_report_step}
