"""Hardening (issue 14): a typo never destroys work, every stage is checked before the first
runs, config files' values are type-checked, and one broken plugin does not take the CLI down."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pytest

from plabel_kit import LabelSource, PseudoLabel, RegistryError, hookimpl
from plabel_kit.interfaces import Refiner
from plabel_kit.plugins import Plugins
from tests.conftest import REPO, run_plabel

# cheap stages: no training, no CRF
PIPELINE = """
labelled = None
note = 'a variable'
stages = [
    dict(name='whole', step='source', type='whole_image'),
    dict(name='vote', step='combine', inputs=['@whole', '@whole'], type='vote'{vote}),
    dict(name='table', step='evaluate', labels={{'whole': '@whole', 'vote': '@vote'}}{table}),
]
"""


def write_pipeline(path: Path, vote: str = "", table: str = "") -> Path:
    path.write_text(PIPELINE.format(vote=vote, table=table))
    return path


def run(pipeline, data, work, *extra):
    return run_plabel("run", pipeline, "--data", data, "--work", work, *extra)


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its mtime and bytes."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def one_line_error(result, *messages):
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for message in messages:
        assert message in result.stderr, result.stderr


@pytest.fixture
def finished(scenes, tmp_path):
    """A finished run, with a fake trained checkpoint in the first stage's folder."""
    pipeline, work = write_pipeline(tmp_path / "p.py"), tmp_path / "work"
    result = run(pipeline, scenes, work)
    assert result.returncode == 0, result.stderr
    (work / "whole" / "work").mkdir()
    (work / "whole" / "work" / "latest.pth").write_bytes(b"two days of training")
    return pipeline, work


@pytest.mark.parametrize("edit, message", [
    (["--set", "whole.mutli=first"], "has no parameter 'mutli'; did you mean 'multi'"),
    # the first stage's edit is valid and would clear it; the typo is in a later stage
    (["--set", "whole.multi=first", "--set", "vote.tie=first"], "has no parameter 'tie'; did you mean 'ties'"),
    (["--set", "whole.multi=3"], "whole_image.multi: expected str, got 3 (int)"),
])
def test_a_typo_in_set_touches_nothing(finished, scenes, edit, message):
    pipeline, work = finished
    before = {name: snapshot(work / name) for name in ("whole", "vote", "table")}
    for extra in ([], ["--dry-run"]):
        one_line_error(run(pipeline, scenes, work, *edit, *extra), message)
        assert {name: snapshot(work / name) for name in before} == before
    assert not list(work.glob(".*.cleared"))


def test_an_unknown_variable_in_set_is_refused(finished, scenes):
    pipeline, work = finished
    for extra in ([], ["--dry-run"]):
        one_line_error(run(pipeline, scenes, work, "--set", "labeled=x.csv", *extra),
                       "no variable 'labeled'; did you mean 'labelled'")
    one_line_error(run(pipeline, scenes, work, "--set", "work=/elsewhere"), "set by plabel run itself")
    assert run(pipeline, scenes, work, "--set", "labelled=x.csv", "--dry-run").returncode == 0


@pytest.mark.parametrize("vote, table, message", [
    (", tie='first'", "", "stage 'vote': combiner 'vote' has no parameter 'tie'; did you mean 'ties'"),
    (", ties='frist'", "", "stage 'vote': combiner 'vote': ties must be one of"),  # the component's own check
    (", ties=2", "", "vote.ties: expected str, got 2 (int)"),
    (", tags=1", "", "vote.tags: expected bool, got 1 (int)"),
    ("", ", titel='x'", "stage 'table': evaluate stages have no key 'titel'; did you mean 'title'"),
    ("", ", segmenters=['@vote/test.json']", "stage 'table': each of `segmenters` needs `scores`"),
    ("", ", note='{notee}'", "uses {notee}, which is not a variable; did you mean 'note'"),
])
def test_a_bad_last_stage_stops_the_run_before_the_first(scenes, tmp_path, vote, table, message):
    pipeline, work = write_pipeline(tmp_path / "p.py", vote=vote, table=table), tmp_path / "work"
    for extra in (["--dry-run"], []):
        one_line_error(run(pipeline, scenes, work, *extra), message)
        assert not work.exists() or not [p for p in work.iterdir() if p.is_dir()]


def test_stages_reading_outputs_not_made_yet_are_checked_without_them(scenes, tmp_path):
    """irnet opens its CAM label set when built: its stage is checked by name and type only."""
    pipeline = tmp_path / "p.py"
    text = ("stages = [dict(name='whole', step='source', type='whole_image'),\n"
            "          dict(name='irnet', step='source', type='irnet', cam='@whole', {extra}),\n"
            "          dict(name='crf', step='refine', input='@irnet', type='crf', config='@whole/crf.py')]\n")
    pipeline.write_text(text.format(extra="epochs=2"))
    dry = run(pipeline, scenes, tmp_path / "work", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "irnet" in dry.stdout and "crf" in dry.stdout and not (tmp_path / "work").exists()
    pipeline.write_text(text.format(extra="epoch=2"))
    one_line_error(run(pipeline, scenes, tmp_path / "work", "--dry-run"), "did you mean 'epochs'")
    pipeline.write_text(text.format(extra="epochs=2.5"))
    one_line_error(run(pipeline, scenes, tmp_path / "work"), "irnet.epochs: expected int, got 2.5 (float)")
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("name, extra", [
    ("evolving_seqmerge_small.py", ["--set", "test_data={data}"]),
    ("evolving_seqmerge.py", ["--to", "tasks"]),  # annotations and test_data come later
    ("voc_isle_small.py", ["--set", "labelled={data}", "--set", "val_data={data}"]),
    ("voc_isle.py", ["--to", "cam"]),
])
def test_shipped_pipelines_pass_the_checks(scenes, tmp_path, name, extra):
    pipeline = REPO / "configs" / "pipelines" / name
    result = run(pipeline, scenes, tmp_path / "work", "--dry-run", *[e.format(data=scenes) for e in extra])
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "work").exists()


def test_command_stages_are_checked_before_the_run(scenes, tmp_path):
    pipeline = tmp_path / "p.py"
    head = "missing = None\nstages = [dict(name='whole', step='source', type='whole_image'),\n"
    for line, message in [
        ("dict(name='c', step='command', run=['chek', '--data', '{data}'])", "`plabel chek` is not a plabel command; "
                                                                             "did you mean 'check'"),
        ("dict(name='c', step='command', run=['synth', 'scens', '{out}'])", "`plabel synth scens` is not a plabel "
                                                                            "command; did you mean 'scenes'"),
        ("dict(name='c', step='command', run=['check', '--data', '{missing}'])", "needs {missing}"),
        ("dict(name='c', step='command', run=['check'], data='{data}')", "command stages have no key 'data'"),
        ("dict(name='c', step='command')", "a command stage needs `run`"),
    ]:
        pipeline.write_text(head + "          " + line + "]\n")
        one_line_error(run(pipeline, scenes, tmp_path / "work"), message)
        assert not (tmp_path / "work").exists()
    # a stage after --to may use a variable that a later run sets
    pipeline.write_text(head + "          dict(name='c', step='command', run=['check', '--data', '{missing}'])]\n")
    assert run(pipeline, scenes, tmp_path / "work", "--to", "whole", "--dry-run").returncode == 0


def test_a_float_in_a_config_file_for_an_int_parameter_is_refused(scenes, tmp_path):
    config = tmp_path / "cam.py"
    config.write_text("epochs = 2.7\n")
    one_line_error(run_plabel("source", "cam", "--data", scenes, "--out", tmp_path / "cam", "--config", config),
                   "cam.epochs: expected int, got 2.7 (float)")
    config = tmp_path / "cam.json"
    config.write_text(json.dumps({"epochs": 2.0}))
    one_line_error(run_plabel("source", "cam", "--data", scenes, "--out", tmp_path / "cam", "--config", config),
                   "cam.epochs: expected int, got 2.0 (float)")
    assert not (tmp_path / "cam").exists()


@dataclass
class Typed(LabelSource):
    """Every kind of parameter type the built-in components declare."""

    epochs: int = 3
    lr: float = 0.1
    flip: bool = True
    name_: str = "x"
    limit: float | None = None
    scales: tuple[float, ...] = (1.0,)
    size: tuple[int, int] = (2, 3)
    thresholds: tuple[float | None, ...] | None = None

    def predict(self, samples):
        return [PseudoLabel(np.zeros(s.image.shape[:2], np.uint8)) for s in samples]


class Plugin:
    def __init__(self, **sources):
        self.sources = sources

    @hookimpl
    def register_label_sources(self, register):
        for name, cls in self.sources.items():
            register(cls, name=name)


def test_non_string_values_are_checked_against_the_declared_type():
    loaded = Plugins(load_entry_points=False)
    loaded.add(Plugin(typed=Typed), "a", "pkg-a", "1.0")
    registry = loaded.registry
    built = registry.build("label_source", {"type": "typed", "epochs": 4, "lr": 1, "flip": False, "limit": None,
                                            "scales": [1, 0.5], "size": [4, 5], "thresholds": [0.3, None]})
    assert (built.epochs, built.lr, built.scales, built.size, built.thresholds) == (4, 1.0, (1.0, 0.5), (4, 5),
                                                                                     (0.3, None))
    assert isinstance(built.lr, float) and isinstance(built.scales, tuple)
    for key, value, message in [("epochs", 2.7, "expected int, got 2.7 (float)"),
                                ("epochs", True, "expected int, got True (bool)"),
                                ("lr", "fast", "expected float, got 'fast'"),
                                ("flip", 1, "expected bool, got 1 (int)"),
                                ("name_", 5, "expected str, got 5 (int)"),
                                ("limit", "x", "expected float, got 'x'"),
                                ("scales", [1, "a"], "expected float, got 'a'"),
                                ("size", [1, 2, 3], "expected 2 values"),
                                ("thresholds", 0.5, "expected tuple[float | None, ...], got 0.5 (float)")]:
        with pytest.raises(RegistryError, match=re.escape(f"typed.{key}: {message}")):
            registry.build("label_source", {"type": "typed", key: value})
    assert registry.validate("label_source", {"type": "typed", "epochs": "5"})[1] == {"epochs": 5}


# ---- plugins ----------------------------------------------------------------------------

@dataclass
class Box(LabelSource):
    """A label source two plugins both call ``box``."""

    def predict(self, samples):
        return [PseudoLabel(np.ones(s.image.shape[:2], np.uint8)) for s in samples]


@dataclass
class OnlyA(Box):
    """A name only one plugin registers."""


@dataclass
class Keep(Refiner):
    def refine(self, sample, pseudo):
        return pseudo


def test_a_name_two_plugins_register_fails_only_where_it_is_used():
    loaded = Plugins(load_entry_points=False)
    loaded.add(Plugin(box=Box, only_a=OnlyA), "a", "pkg-a", "1.0")
    loaded.add(Plugin(box=Box), "b", "pkg-b", "2.0")
    registry = loaded.registry  # no error: recorded
    assert registry.build("label_source", {"type": "only_a"}).name == "only_a"
    with pytest.raises(RegistryError) as info:
        registry.build("label_source", {"type": "box"})
    message = str(info.value)
    assert "'box' is registered twice" in message and "pkg-a 1.0" in message and "pkg-b 2.0" in message
    assert "PLABEL_DISABLE_PLUGINS" in message
    assert [e.package for e in registry.registrants("label_source", "box")] == ["pkg-a 1.0", "pkg-b 2.0"]
    [line] = registry.clash_messages()
    assert "pkg-a 1.0" in line and "pkg-b 2.0" in line and "PLABEL_DISABLE_PLUGINS=a or =b" in line


def test_a_plugin_whose_hook_raises_is_broken_and_the_others_work():
    class Half(Plugin):
        @hookimpl
        def register_refiners(self, register):
            register(Keep, name="keep")
            raise ValueError("no GPU driver")

        @hookimpl
        def register_commands(self, cli):
            raise ImportError("click too old")

    class Commands:
        @hookimpl
        def register_commands(self, cli):
            @cli.command(name="hello")
            def hello():
                click.echo("hi")

    loaded = Plugins(load_entry_points=False)
    loaded.add(Half(half_source=Box), "half", "pkg-half", "1.0")
    loaded.add(Plugin(box=Box), "good", "pkg-good", "1.0")
    loaded.add(Commands(), "commands", "pkg-commands", "1.0")
    registry = loaded.registry
    assert registry.names("label_source") == ["box"] and registry.names("refiner") == []  # none of half's
    assert loaded.info["half"].problem == "register_refiners raised ValueError: no GPU driver"
    with pytest.raises(RegistryError, match=r"unknown refiner 'keep'.*plugin 'half' \(pkg-half 1.0\) is broken "
                                            r"\(register_refiners raised ValueError: no GPU driver\)"):
        registry.get("refiner", "keep")
    group = click.Group("g")
    loaded.add_commands(group)
    assert "hello" in group.commands
    assert "register_commands raised ImportError: click too old" in loaded.info["half"].problem


def write_distribution(site: Path, name: str, version: str, entry_points: dict, module: str, code: str):
    """A plugin package as pip installs it: a module and a .dist-info with its entry points."""
    (site / f"{module}.py").write_text(code)
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[plabel_kit]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))


BOX_PLUGIN = '''
from dataclasses import dataclass

import numpy as np

from plabel_kit import LabelSource, PseudoLabel, hookimpl


@dataclass
class Box(LabelSource):
    """Ones everywhere ({who})."""

    def predict(self, samples):
        return [PseudoLabel(np.ones(s.image.shape[:2], np.uint8)) for s in samples]


@hookimpl
def register_label_sources(register):
    register(Box, name="box")
'''


@pytest.fixture(scope="module")
def bad_site(tmp_path_factory):
    """Two packages registering ``box``, one plugin that does not import, and two packages
    providing one entry-point name."""
    site = tmp_path_factory.mktemp("site")
    write_distribution(site, "clash-a", "1.0", {"clasha": "clash_a"}, "clash_a", BOX_PLUGIN.format(who="a"))
    write_distribution(site, "clash-b", "2.0", {"clashb": "clash_b"}, "clash_b", BOX_PLUGIN.format(who="b"))
    write_distribution(site, "broken-c", "0.1", {"brokenc": "broken_c"}, "broken_c",
                       "import plabel_no_such_module\n")
    write_distribution(site, "dup-one", "1.0", {"dup": "dup_one"}, "dup_one", "")
    write_distribution(site, "dup-two", "1.0", {"dup": "dup_two"}, "dup_two", "")
    return {"PYTHONPATH": str(site)}


def test_plugins_lists_clashes_and_broken_plugins(bad_site):
    result = run_plabel("plugins", env=bad_site)
    assert result.returncode == 0, result.stderr
    [clash] = [line for line in result.stdout.splitlines() if line.startswith("clash:")]
    # which package comes first is the order Python finds them in: either
    assert clash.startswith("clash: label source 'box' is registered by plugin 'clash")
    assert "plugin 'clasha' (clash-a 1.0)" in clash and "plugin 'clashb' (clash-b 2.0)" in clash
    assert "PLABEL_DISABLE_PLUGINS=" in clash and "=clasha" in clash and "=clashb" in clash
    text = result.stdout
    assert "broken: plugin 'brokenc' (broken-c 0.1): failed to load (broken_c): ModuleNotFoundError: No module " \
           "named 'plabel_no_such_module'" in text
    assert "already provides a plugin named 'dup'" in text
    rows = json.loads(run_plabel("plugins", "--json", env=bad_site, check=True).stdout)
    status = {(r["name"], r["package"]): r["status"] for r in rows}
    assert status[("clasha", "clash-a")] == status[("clashb", "clash-b")] == "clash"
    assert status[("brokenc", "broken-c")] == "broken" and status[("baseline", "plabel-kit")] == "ok"
    assert sorted(s for (name, _), s in status.items() if name == "dup") == ["broken", "ok"]
    components = json.loads(run_plabel("components", "--kind", "source", "--json", env=bad_site, check=True).stdout)
    boxes = [(r["package"], r["clash"]) for r in components if r["name"] == "box"]
    assert sorted(boxes) == [("clash-a 1.0", True), ("clash-b 2.0", True)]
    listing = run_plabel("components", env=bad_site, check=True).stdout
    assert "box (clash)" in listing and "clash: label source 'box'" in listing


def test_only_the_clashing_name_fails(bad_site, scenes, tmp_path):
    ok = run_plabel("source", "whole_image", "--data", scenes, "--out", tmp_path / "whole", env=bad_site)
    assert ok.returncode == 0, ok.stderr
    clash = run_plabel("source", "box", "--data", scenes, "--out", tmp_path / "box", env=bad_site)
    one_line_error(clash, "'box' is registered twice", "clash-a 1.0", "clash-b 2.0", "PLABEL_DISABLE_PLUGINS")
    assert not (tmp_path / "box").exists()
    fixed = run_plabel("source", "box", "--data", scenes, "--out", tmp_path / "box", env={
        **bad_site, "PLABEL_DISABLE_PLUGINS": "clashb"})
    assert fixed.returncode == 0, fixed.stderr
    unknown = run_plabel("source", "boxx", "--data", scenes, "--out", tmp_path / "x", env={
        **bad_site, "PLABEL_DISABLE_PLUGINS": "clashb"})
    assert unknown.returncode == 2 and "did you mean 'box'" in unknown.stderr
    assert "plugin 'brokenc' (broken-c 0.1) is broken" in unknown.stderr
