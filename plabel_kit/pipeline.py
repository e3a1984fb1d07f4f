"""Pipelines: named stages run in order under one work dir (``plabel run``).

A pipeline is an mmengine Python config (``configs/pipelines/``) with a list ``stages``;
each stage is a dict with a ``name`` (its folder under the work dir) and a ``step``:

- ``source``: ``type`` and parameters of a label source (``config``: a parameter file whose
  values the stage's own keys override; ``data`` optional);
- ``refine``: ``input`` (a label set) and ``type`` + parameters of a refiner;
- ``combine``: ``inputs``, optional ``select_on`` (a labelled dataset), ``type`` + parameters;
- ``command``: ``run``, one ``plabel`` command line (a list of arguments) or a list of them,
  for steps that plugins add as commands (``plabel sequence ...``, ``plabel segment ...``),
  checked and run by the ``commands`` object the Runner is given (``CommandRunner``: the
  CLI hands one in; without it a command stage stops with an error);
- ``evaluate``: ``labels`` {title: label set} and ``segmenters`` (rows of test scores)
  -> ``results.json`` and a table;
- ``report``: ``labels`` {title: label set} -> an HTML page with overlays (``plabel report``).

In strings, ``{data}``, ``{work}``, ``{out}`` (this stage's folder), ``{config_dir}`` (the
pipeline file's folder) and any top-level variable of the pipeline (e.g. ``{test_data}``)
are substituted, and ``@NAME`` or ``@NAME/sub/path`` names an earlier stage's folder.

Before anything is created, cleared or run (and in a dry run), every stage is checked: its
keys, the variables and references it uses, its command lines' command names, and its
component's name and parameters with their types: a typo stops the run with nothing touched.

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
from typing import Protocol

from .errors import PlabelError
from .labelset import exclusive_folder, write_atomic

STEPS = ("source", "refine", "combine", "command", "evaluate", "report")
#: the keys each step reads (besides ``name`` and ``step``); a source, refine or combine
#: stage's other keys are its component's parameters, any other stage's are errors
STEP_KEYS = {
    "source": {"config", "data", "split"},
    "refine": {"input", "config", "data", "split"},
    "combine": {"inputs", "select_on", "select_split", "config", "data", "split"},
    "command": {"run"},
    "evaluate": {"labels", "segmenters", "title", "data", "split"},
    "report": {"labels", "n", "data", "split"},
}
REQUIRED_KEYS = {"refine": ("input",), "combine": ("inputs",), "command": ("run",), "report": ("labels",)}
COMPONENT_KINDS = {"source": "label_source", "refine": "refiner", "combine": "combiner"}
#: variables every pipeline has: set by ``plabel run`` itself, not by --set
BUILTIN_VARIABLES = ("data", "work", "out", "config_dir")
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
            _check_variable(pipeline, key)
            pipeline.variables[key] = value
        else:
            pipeline.stage(stage_name).spec[param] = value  # the key is checked with the stage (Runner.check)
    seen: list[str] = []
    for stage in stages:
        stage.needs = sorted(_references(stage.spec))
        unknown = [n for n in stage.needs if n not in seen]
        if unknown:
            raise PlabelError(f"{path}: stage {stage.name!r} reads @{unknown[0]}, which is not an earlier stage")
        seen.append(stage.name)
    return pipeline


def _check_variable(pipeline: Pipeline, name: str):
    """``--set NAME=...`` must name one of the pipeline's variables: a typo would otherwise
    be accepted and change nothing."""
    from .registry import did_you_mean

    if name in BUILTIN_VARIABLES:
        raise PlabelError(f"--set {name}=...: {{{name}}} is set by plabel run itself "
                          f"({'--data' if name == 'data' else '--work' if name == 'work' else 'not settable'})")
    if name not in pipeline.variables:
        known = sorted(pipeline.variables)
        raise PlabelError(f"--set {name}=...: {pipeline.path} has no variable {name!r}{did_you_mean(name, known)} "
                          f"(variables: {', '.join(known) or 'none'}; a stage parameter is STAGE.KEY)")


class _Unset(PlabelError):
    """A stage uses a variable that is declared but not set (yet)."""


#: what ``Runner.resolve`` makes of a string using an unset variable when checking a stage
#: this run does not reach: its value is not known yet
UNSET = type("Unset", (), {"__repr__": lambda self: "<unset>"})()


class CommandRunner(Protocol):
    """What checks and runs the command lines of ``step='command'`` stages (a list of
    ``plabel`` arguments each); the CLI hands one to the Runner
    (``plabel_kit.commands.GroupCommandRunner``), so that this module needs no CLI."""

    def check(self, args: list) -> None:
        """Raise PlabelError unless ``args`` names a command; arguments that are not
        strings are not known yet (a stage this run does not reach)."""

    def run(self, args: list[str]) -> None:
        """Run one command line; raise PlabelError if it fails."""


class Runner:
    """Runs a pipeline's stages in order under ``work``; see the module docstring.
    ``commands`` checks and runs command stages' lines; without it, a pipeline whose run
    reaches a command stage stops (before anything runs) with an error that says so."""

    def __init__(self, pipeline: Pipeline, data, work, *, progress: bool = True, echo=print,
                 commands: CommandRunner | None = None):
        self.pipeline, self.work = pipeline, Path(work)
        self.variables = {**pipeline.variables, "data": str(data), "work": str(self.work),
                          "config_dir": str(pipeline.path.resolve().parent)}
        self.progress, self.echo, self.commands = progress, echo, commands
        self.fingerprints: dict[str, str] = {}
        self._datasets: dict = {}

    # ---- resolution ------------------------------------------------------------------

    def resolve(self, value, stage: Stage, unset=_Unset):
        """Substitute variables and ``@stage`` references in every string of ``value``. A
        string using a variable that is not set raises; with ``unset`` given, it becomes
        that value instead (checking stages this run does not reach)."""
        if isinstance(value, str):
            match = _REFERENCE.match(value)
            if match:
                return str(self.work / match.group(1)) + (match.group(2) or "")
            variables = {**self.variables, "out": str(self.work / stage.name)}
            whole = _VARIABLE.fullmatch(value)
            if whole and whole.group(1) in variables and variables[whole.group(1)] is None:
                # an optional setting left unset (e.g. config='{irnet_config}'), or one a
                # stage beyond this run may get later
                return None if unset is _Unset else unset

            def substitute(m, depth=0):
                name = m.group(1)
                if name not in variables:
                    from .registry import did_you_mean

                    raise PlabelError(f"{self.pipeline.path}: stage {stage.name!r} uses {{{name}}}, which is not a "
                                      f"variable{did_you_mean(name, variables)} (variables: "
                                      f"{', '.join(sorted(variables))})")
                if variables[name] is None:
                    raise _Unset(f"{self.pipeline.path}: stage {stage.name!r} uses {{{name}}}, which is not "
                                 f"set (--set {name}=...; variables: {', '.join(sorted(variables))})")
                if depth > 10:
                    raise PlabelError(f"{self.pipeline.path}: variable {name!r} refers to itself")
                return _VARIABLE.sub(lambda inner: substitute(inner, depth + 1), str(variables[name]))

            try:
                return _VARIABLE.sub(substitute, value)
            except _Unset:
                if unset is _Unset:
                    raise
                return unset
        if isinstance(value, dict):
            return {k: self.resolve(v, stage, unset) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.resolve(v, stage, unset) for v in value]
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

    def check(self, start: str | None = None, stop: str | None = None) -> list[tuple[Stage, str]]:
        """The plan, once every stage has been checked (``check_stage``): a typo fails here,
        before anything is created, cleared or run."""
        plan = self.plan(start, stop)
        for stage, action in plan:
            self.check_stage(stage, reached=action not in ("before", "after"))
        return plan

    def check_stage(self, stage: Stage, reached: bool = True):
        """Check a stage's keys, the variables and references it uses and, for a component
        stage, its component's name and parameters (those of its ``config`` file included),
        without reading what earlier stages write (it may not exist yet). A stage the run
        does not reach (not ``reached``) may use variables that are not set yet."""
        where = f"{self.pipeline.path}: stage {stage.name!r}"
        spec = self.resolve(stage.spec, stage, unset=_Unset if reached else UNSET)
        for key in REQUIRED_KEYS.get(stage.step, ()):
            if spec.get(key) is None or spec.get(key) == []:
                raise PlabelError(f"{where}: a {stage.step} stage needs `{key}`")
        if stage.step in COMPONENT_KINDS:
            self._check_component(stage, spec, where)
            return
        from .registry import did_you_mean

        allowed = STEP_KEYS[stage.step]
        for key in spec:
            if key not in allowed:
                raise PlabelError(f"{where}: {stage.step} stages have no key {key!r}{did_you_mean(key, allowed)} "
                                  f"(keys: {', '.join(sorted(allowed))})")
        if stage.step == "command":
            self._check_command_lines(stage, spec, where, reached)
        if spec.get("labels") not in (None, UNSET) and not isinstance(spec["labels"], dict):
            raise PlabelError(f"{where}: `labels` must be a dict {{title: label set}}")
        for row in spec.get("segmenters") or []:
            if not isinstance(row, dict) or "scores" not in row:
                raise PlabelError(f"{where}: each of `segmenters` needs `scores` (a segment test --json file)")

    def _check_command_lines(self, stage: Stage, spec: dict, where: str, reached: bool):
        """Each line of a command stage is a list of arguments whose first names a plabel
        command (the second, a group's sub-command; ``self.commands`` checks them);
        arguments left unset stop here, not after the stages before it ran."""
        lines, raw = spec["run"], stage.spec["run"]
        if not isinstance(lines, list) or not all(isinstance(a, (str, list)) or a is None or a is UNSET
                                                  for a in lines):
            raise PlabelError(f"{where}: `run` must be a list of plabel arguments, or a list of them")
        if not any(isinstance(a, list) for a in lines):
            lines, raw = [lines], [raw]
        for args, raw_args in zip(lines, raw):
            if not isinstance(args, list) or not args:
                raise PlabelError(f"{where}: each line of `run` must be a non-empty list of plabel arguments")
            unset = [r for a, r in zip(args, raw_args) if a is None]
            if unset:
                raise PlabelError(f"{where} needs {unset[0]} (set it with --set {str(unset[0]).strip('{}')}=...)")
            if self.commands is None:
                if not reached:
                    continue  # a stage this run does not reach needs no command runner
                raise PlabelError(_NO_COMMANDS.format(where=where))
            try:
                self.commands.check(args)
            except PlabelError as exc:
                raise PlabelError(f"{where}: {exc}") from None

    def _check_component(self, stage: Stage, spec: dict, where: str):
        """Build the stage's component (its __post_init__ checks values too) unless its
        parameters name earlier stages' outputs or unset variables: then check names and
        types only (an irnet source opens its CAM label set when built)."""
        from .plugins import get_registry
        from .registry import KIND_TITLES, did_you_mean, load_config, parameters

        kind, registry = COMPONENT_KINDS[stage.step], get_registry()
        if spec.get("type") is UNSET:
            return  # named by a variable not set yet: nothing to check against
        if not spec.get("type"):
            raise PlabelError(f"{where}: a {stage.step} stage needs `type` (the {KIND_TITLES[kind]}'s name)")
        try:
            cls = registry.get(kind, spec["type"])
        except PlabelError as exc:
            raise PlabelError(f"{where}: {exc}") from None
        params, step_keys = [p.name for p in parameters(cls)], STEP_KEYS[stage.step]
        for key in spec:
            if key not in step_keys and key != "type" and key not in params:
                raise PlabelError(f"{where}: {KIND_TITLES[kind]} {cls.name!r} has no parameter {key!r}"
                                  f"{did_you_mean(key, [*params, *step_keys])} (parameters: {', '.join(params) or 'none'}; "
                                  f"{stage.step} stage keys: {', '.join(sorted(step_keys))})")
        config, complete = {}, True
        path = spec.get("config")
        if not (path is None or path is UNSET or isinstance(path, str)):
            raise PlabelError(f"{where}: `config` must be the path of a parameter file, not {path!r}")
        if path is UNSET or (path and _is_within(path, self.work) and not Path(path).is_file()):
            complete = False  # a config file an earlier stage writes, or one not set yet
        elif path:
            if not Path(path).is_file():
                raise PlabelError(f"{where}: config file {path} not found")
            try:
                config = load_config(path)
            except PlabelError as exc:
                raise PlabelError(f"{where}: {exc}") from None
        own = {k: v for k, v in spec.items() if k not in step_keys}
        known = {k: v for k, v in own.items() if not _has_unset(v)}
        complete = complete and len(known) == len(own)
        config.update(known)
        raw = {k: v for k, v in stage.spec.items() if k not in step_keys}
        try:
            if complete and not _references(raw):
                registry.build(kind, config).close()
            else:
                registry.validate(kind, config, complete=complete)
        except PlabelError as exc:
            raise PlabelError(f"{where}: {exc}") from None

    def run(self, start: str | None = None, stop: str | None = None) -> dict:
        """Run the stages from ``start`` to ``stop``; returns {stage: action taken}."""
        self.check(start, stop)
        self.work.mkdir(parents=True, exist_ok=True)
        # one run per work dir: a second stops at once with the holder's pid
        with exclusive_folder(self.work, "pipeline work dir"):
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


def _has_unset(value) -> bool:
    if isinstance(value, dict):
        return any(_has_unset(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_unset(v) for v in value)
    return value is UNSET


def _is_within(path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


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
    config.update({k: v for k, v in spec.items() if k not in STEP_KEYS[stage.step]})
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


#: a command stage reached by a Runner that was given no ``commands``
_NO_COMMANDS = ("{where}: a command stage needs a command runner, and this pipeline Runner has none "
                "(`plabel run` gives one; in Python: Runner(..., commands=GroupCommandRunner(group)), "
                "see plabel_kit.commands)")


def run_command_step(runner: Runner, stage: Stage, spec: dict) -> dict:
    """``plabel`` command lines, run one after another by ``runner.commands``."""
    if runner.commands is None:
        raise PlabelError(_NO_COMMANDS.format(where=f"stage {stage.name!r}"))
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
                runner.commands.run(args)
        except PlabelError as exc:
            raise PlabelError(f"stage {stage.name!r}: {exc}") from None
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
