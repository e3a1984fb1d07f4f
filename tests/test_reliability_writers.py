"""Writers under stress (issue 14): one writer per output folder, a resume only with the
same images, one-line errors (disk full, a component's bug, a busy folder), refused writes
leave nothing behind, producers name their plugin."""
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_plabel

PLABEL = Path(sys.executable).parent / "plabel"
BASELINE = {"PLABEL_LOAD_PLUGINS": "baseline"}  # the trivial sources only: quick to start


@pytest.fixture(scope="module")
def forty(tmp_path_factory):
    """40 synthetic scenes: enough that writing a label set takes a moment."""
    from plabel_kit.synth import make_scenes

    return make_scenes(tmp_path_factory.mktemp("forty"), n=40, size=64, seed=5, progress=False)


def _start(*args, env=None):
    return subprocess.Popen([str(PLABEL), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, **(env or BASELINE)))


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# ---- one writer per folder -------------------------------------------------------------

def test_concurrent_writers_never_mix_and_losers_say_who_holds_the_folder(forty, tmp_path):
    references = {}
    for source in ("ground_truth", "whole_image"):
        references[source] = tmp_path / f"reference_{source}"
        run_plabel("source", source, "--data", forty, "--out", references[source], env=BASELINE, check=True)
        references[source] = _files(references[source] / "labels")
    busy = 0
    for k in range(20):
        pair = ("ground_truth", "ground_truth") if k % 2 else ("ground_truth", "whole_image")
        out = tmp_path / f"ls{k}"
        procs = [_start("source", source, "--data", forty, "--out", out) for source in pair]
        results = [(source, proc.returncode, stderr)
                   for source, proc, (_, stderr) in ((s, p, p.communicate()) for s, p in zip(pair, procs))]
        winners = [source for source, rc, _ in results if rc == 0]
        assert len(winners) == (1 if pair[0] != pair[1] else len(winners)) and winners, results
        for source, rc, stderr in results:
            if rc != 0:
                line = _one_line(stderr)
                assert rc == 1 and ("pid" in line or "another producer" in line), line
                busy += "pid" in line
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["complete"] and manifest["producer"]["type"] == winners[0]
        assert _files(out / "labels") == references[winners[0]], f"mixed labels in {out}"
        assert sorted(p.name for p in out.iterdir()) == ["labels", "manifest.json", "scores"]
    assert busy, "no two writers ever overlapped: the test did not exercise the lock"


def test_torchrun_ranks_share_one_set_and_a_job_is_refused_while_another_writer_holds_it(forty, tmp_path):
    pytest.importorskip("torch")
    from plabel_kit.labelset import exclusive_folder

    def job(out):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ranks = [_start("source", "ground_truth", "--data", forty, "--out", out,
                        env=dict(BASELINE, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                                 MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
                 for r in range(2)]
        return [(p.wait(timeout=120), p.communicate()[1]) for p in ranks]

    reference = tmp_path / "reference"
    run_plabel("source", "ground_truth", "--data", forty, "--out", reference, env=BASELINE, check=True)
    shared = tmp_path / "shared"
    assert [rc for rc, _ in job(shared)] == [0, 0]
    assert _files(shared / "labels") == _files(reference / "labels")
    assert json.loads((shared / "manifest.json").read_text())["counts"]["labels"] == 40

    held = tmp_path / "held"
    # several tries: a refused rank used to abort now and then (gloo's threads at exit:
    # SIGABRT, "terminate called") instead of exiting 1 after its message
    for _ in range(4):
        with exclusive_folder(held, "label set"):
            results = job(held)
        assert [rc for rc, _ in results] == [1, 1], [err[-300:] for _, err in results]
        assert f"pid {os.getpid()}" in _one_line(results[0][1])
        assert "rank 0" in _one_line(results[1][1])
        assert list(held.iterdir()) == []


# ---- a resume is for the same dataset ----------------------------------------------------

def test_resume_with_other_images_is_refused_and_evaluate_warns(tiny, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny.parent, other)
    rng = np.random.default_rng(7)
    for k in range(3):  # same ids, same masks, other pictures
        Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).save(other / "img" / f"t{k}.png")
    out = tmp_path / "ls"
    run_plabel("source", "ground_truth", "--data", tiny, "--out", out, env=BASELINE, check=True)
    before = _files(out)

    refused = run_plabel("source", "ground_truth", "--data", other / "index.csv", "--out", out, env=BASELINE)
    line = _one_line(refused.stderr)
    assert refused.returncode == 1 and "other images" in line and "id 't0'" in line
    assert str(tiny.parent / "img" / "t0.png") in line and str(other / "img" / "t0.png") in line
    assert _files(out) == before

    same = run_plabel("evaluate", "--data", tiny, "--labels", out, env=BASELINE, check=True)
    assert "warning" not in same.stderr
    warned = run_plabel("evaluate", "--data", other / "index.csv", "--labels", out, env=BASELINE, check=True)
    assert "mIoU" in warned.stdout and "other images for 3 of the scored ids" in warned.stderr
    strict = run_plabel("evaluate", "--strict", "--data", other / "index.csv", "--labels", out, env=BASELINE)
    assert strict.returncode == 1 and "other images" in _one_line(strict.stderr)


# ---- disk full -------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 600 KiB tmpfs (needs root: skipped otherwise), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _fill(mount: Path, leave: int) -> Path:
    """A file taking all of ``mount``'s free space but ``leave`` bytes."""
    stat = os.statvfs(mount)
    filler = mount / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as handle:  # ENOSPC at the very end: full
        handle.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return filler


def test_disk_full_is_one_line_and_a_rerun_completes_byte_identically(forty, tmp_path, small_disk):
    reference = tmp_path / "reference"
    run_plabel("source", "ground_truth", "--data", forty, "--out", reference, env=BASELINE, check=True)
    filler = _fill(small_disk, 64 * 1024)  # room for the manifest and a dozen labels
    out = small_disk / "ls"
    full = run_plabel("source", "ground_truth", "--data", forty, "--out", out, env=BASELINE)
    line = _one_line(full.stderr)
    assert full.returncode == 1
    assert f"no space left on device writing {out / 'labels'}" in line and "(id 'scene_" in line
    assert "finished images are kept, rerun to resume" in line
    kept = _files(out / "labels")
    assert 0 < len(kept) < 40 and all(data == (reference / "labels" / name).read_bytes() for name, data in kept.items())

    filler.unlink()
    run_plabel("source", "ground_truth", "--data", forty, "--out", out, env=BASELINE, check=True)
    assert _files(out / "labels") == _files(reference / "labels")
    assert json.loads((out / "manifest.json").read_text())["counts"] == {"labels": 40, "scores": 0}
    assert sorted(p.name for p in out.iterdir()) == ["labels", "manifest.json", "scores"]


def test_a_new_folder_refused_by_a_full_disk_is_not_left_behind(tiny, small_disk):
    _fill(small_disk, 0)
    out = small_disk / "new" / "ls"
    full = run_plabel("source", "ground_truth", "--data", tiny, "--out", out, env=BASELINE)
    assert full.returncode == 1 and "no space left on device writing" in _one_line(full.stderr)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


# ---- refused writes leave nothing ----------------------------------------------------------

def test_refused_writer_leaves_the_folder_as_it_was(tiny, tmp_path):
    out = tmp_path / "ls"
    run_plabel("source", "ground_truth", "--data", tiny, "--out", out, env=BASELINE, check=True)
    before = _files(out)
    names = sorted(p.name for p in out.iterdir())
    refused = run_plabel("source", "whole_image", "--data", tiny, "--out", out, env=BASELINE)
    assert refused.returncode == 1 and "another producer" in _one_line(refused.stderr)
    assert sorted(p.name for p in out.iterdir()) == names and _files(out) == before  # no .tmp, no .lock


# ---- a component's bug -------------------------------------------------------------------

PLUGIN = '''
from dataclasses import dataclass

import numpy as np

from plabel_kit import DataError, LabelSource, PseudoLabel, hookimpl
from plabel_kit.interfaces import Refiner


@dataclass
class Constant(LabelSource):
    """Writes class ``value`` everywhere."""

    value: int = 1

    def predict(self, samples):
        return [PseudoLabel(np.full(s.image.shape[:2], self.value, np.uint8)) for s in samples]


@dataclass
class Broken(Refiner):
    """Divides by zero on image t1 (a plugin's bug)."""

    def refine(self, sample, pseudo):
        if sample.id == "t1":
            return 1 / 0
        return pseudo


@dataclass
class Fussy(Refiner):
    """Refuses image t0 with a DataError (a message meant for the user)."""

    def refine(self, sample, pseudo):
        raise DataError("fussy refuses this image", path=sample.image_path, image_id=sample.id)


@hookimpl
def register_label_sources(register):
    register(Constant, name="constant")


@hookimpl
def register_refiners(register):
    register(Broken, name="broken")
    register(Fussy, name="fussy")
'''


def _third_party(site: Path, version: str = "0.2.0") -> dict:
    """Install the test plugin as a distribution ``plabel-broken`` on PYTHONPATH (a module
    and its dist-info, as pip lays them out)."""
    site.mkdir(exist_ok=True)
    (site / "plabel_broken.py").write_text(PLUGIN)
    for old in site.glob("*.dist-info"):
        shutil.rmtree(old)
    info = site / f"plabel_broken-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: plabel-broken\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[plabel_kit]\nbroken = plabel_broken\n")
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "PLABEL_LOAD_PLUGINS": "baseline,broken"}


def test_a_component_that_raises_is_one_line_with_its_name_and_the_image_id(tiny, tmp_path):
    env = _third_party(tmp_path / "site")
    run_plabel("source", "constant", "--data", tiny, "--out", tmp_path / "in", env=env, check=True)
    out = tmp_path / "out"
    failed = run_plabel("refine", "broken", "--data", tiny, "--in", tmp_path / "in", "--out", out, env=env)
    line = _one_line(failed.stderr)
    assert failed.returncode == 1
    assert "refiner 'broken' failed on id 't1': ZeroDivisionError: division by zero" in line
    assert f"traceback in {out / 'error.log'}" in line
    assert "ZeroDivisionError" in (out / "error.log").read_text() and "plabel_broken.py" in (out / "error.log").read_text()
    assert (out / "labels" / "t0.png").is_file()  # finished images are kept

    debug = run_plabel("--debug", "refine", "broken", "--data", tiny, "--in", tmp_path / "in", "--out", out, env=env)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert 'plabel_broken.py", line' in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("Error: refiner 'broken' failed on id 't1'")

    fussy = run_plabel("refine", "fussy", "--data", tiny, "--in", tmp_path / "in", "--out", tmp_path / "f", env=env)
    assert _one_line(fussy.stderr).endswith("id 't0': fussy refuses this image")  # a PlabelError, unchanged


def test_producer_records_the_plugin_package_and_a_plugin_upgrade_still_resumes(tiny, tmp_path):
    env = _third_party(tmp_path / "site")
    out = tmp_path / "ls"
    run_plabel("source", "constant", "--data", tiny, "--out", out, env=env, check=True)
    producer = json.loads((out / "manifest.json").read_text())["producer"]
    assert producer["plugin"] == {"name": "broken", "package": "plabel-broken", "version": "0.2.0"}

    (out / "labels" / "t2.png").unlink()
    env = _third_party(tmp_path / "site", version="0.3.0")
    run_plabel("source", "constant", "--data", tiny, "--out", out, env=env, check=True)
    assert (out / "labels" / "t2.png").is_file()

    run_plabel("source", "ground_truth", "--data", tiny, "--out", tmp_path / "gt", env=BASELINE, check=True)
    plugin = json.loads((tmp_path / "gt" / "manifest.json").read_text())["producer"]["plugin"]
    assert plugin["name"] == "baseline" and plugin["package"] == "plabel-kit" and plugin["version"]


def test_sequence_files_and_task_folders_have_one_writer(tmp_path):
    """`plabel sequence build` / `tasks` hold the output's lock: a second writer stops at
    once with the holder's pid and writes nothing."""
    from plabel_kit.labelset import exclusive_file, exclusive_folder

    run_plabel("synth", "evolving", tmp_path / "ev", "--n", "24", "--size", "64", check=True)
    data, seq, tasks = tmp_path / "ev" / "index.csv", tmp_path / "seq.json", tmp_path / "tasks"
    with exclusive_file(seq, "sequences file"):  # as a running `sequence build` holds it
        busy = run_plabel("sequence", "build", "--data", data, "--out", seq)
    assert busy.returncode == 1 and f"(pid {os.getpid()})" in busy.stderr and "Traceback" not in busy.stderr
    assert not seq.exists()
    run_plabel("sequence", "build", "--data", data, "--out", seq, check=True)
    with exclusive_folder(tasks, "task folder"):
        busy = run_plabel("sequence", "tasks", seq, "--data", data, "--out", tasks)
        assert busy.returncode == 1 and f"(pid {os.getpid()})" in busy.stderr
        assert [p.name for p in tasks.iterdir()] == [".lock"]
    run_plabel("sequence", "tasks", seq, "--data", data, "--out", tasks, check=True)
