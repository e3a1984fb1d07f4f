"""Pipelines (`plabel run`), the HTML report in headless Chromium, and `plabel demo`."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, run_plabel
from plabel_kit import LabelSet
from plabel_kit.pipeline import load_pipeline

PIPELINE = """
note = 'a variable'
stages = [
    dict(name='bg', step='source', type='background'),
    dict(name='whole', step='source', type='whole_image'),
    dict(name='crf', step='refine', input='@whole', type='crf', iterations={iterations}),
    dict(name='vote', step='combine', inputs=['@bg', '@crf'], type='vote', ties='first'),
    dict(name='check', step='command', run=['check', '--data', '{{data}}']),
    dict(name='table', step='evaluate', labels={{'background': '@bg', 'crf': '@crf', 'vote': '@vote'}}),
    dict(name='report', step='report', n=4, labels={{'crf': '@crf', 'vote': '@vote'}}),
]
"""
ALL = ["bg", "whole", "crf", "vote", "check", "table", "report"]


def write_pipeline(path: Path, iterations: int = 5) -> Path:
    path.write_text(PIPELINE.format(iterations=iterations))
    return path


def run(pipeline, data, work, *extra):
    return run_plabel("run", pipeline, "--data", data, "--work", work, *extra)


def actions(work) -> dict:
    """Stage -> what the last run did, from the log's last run."""
    lines = (Path(work) / "pipeline.log").read_text().splitlines()
    last = max(i for i, line in enumerate(lines) if " pipeline " in line)
    found = {}
    for line in lines[last:]:
        for name in ALL:
            for action in ("run", "rerun", "resume", "redo", "skipped"):
                if f"[{name}] {action}" in line:
                    found.setdefault(name, action)
    return found


def files(folder) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in Path(folder).rglob("*.png")}


def test_runs_once_then_skips_and_edits_rerun_exactly_downstream(scenes, tmp_path):
    pipeline, work = write_pipeline(tmp_path / "p.py"), tmp_path / "work"
    first = run(pipeline, scenes, work)
    assert first.returncode == 0, first.stderr
    assert actions(work) == {name: "run" for name in ALL}
    results = json.loads((work / "table" / "results.json").read_text())
    assert set(results["labels"]) == {"background", "crf", "vote"}
    assert 0 < results["labels"]["crf"]["miou"] < 1
    assert "| crf |" in first.stdout  # the table is printed
    untouched = {name: files(work / name) for name in ("bg", "whole")}

    again = run(pipeline, scenes, work)
    assert again.returncode == 0 and actions(work) == {name: "skipped" for name in ALL}

    # edit one parameter of one stage in the file: that stage and what reads it, only
    write_pipeline(pipeline, iterations=3)
    edited = run(pipeline, scenes, work)
    assert edited.returncode == 0, edited.stderr
    assert actions(work) == {"bg": "skipped", "whole": "skipped", "crf": "rerun", "vote": "rerun",
                             "check": "skipped", "table": "rerun", "report": "rerun"}
    assert LabelSet(work / "crf").producer["config"]["iterations"] == 3
    assert {name: files(work / name) for name in ("bg", "whole")} == untouched

    # the same through --set, and a variable nobody reads changes nothing
    over = run(pipeline, scenes, work, "--set", "crf.iterations=4", "--set", "note=other")
    assert over.returncode == 0 and actions(work)["crf"] == "rerun" and actions(work)["whole"] == "skipped"
    assert LabelSet(work / "crf").producer["config"]["iterations"] == 4


def test_interrupted_stage_resumes_its_unfinished_images(scenes, tmp_path):
    pipeline, work = write_pipeline(tmp_path / "p.py"), tmp_path / "work"
    assert run(pipeline, scenes, work, "--to", "crf").returncode == 0
    assert actions(work) == {"bg": "run", "whole": "run", "crf": "run"} and not (work / "vote").exists()
    # as if killed while labelling: the stage is "running" and one image is missing
    state = json.loads((work / "crf" / "stage.json").read_text())
    (work / "crf" / "stage.json").write_text(json.dumps({**state, "status": "running"}))
    (work / "crf" / "manifest.json").unlink()
    victim = sorted((work / "crf" / "labels").glob("*.png"))[3]
    victim.unlink()
    kept = {k: v for k, v in files(work / "crf").items() if victim.name not in k}
    result = run(pipeline, scenes, work)
    assert result.returncode == 0, result.stderr
    assert actions(work)["crf"] == "resume" and actions(work)["vote"] == "run"
    after = files(work / "crf")
    assert victim.name in {Path(k).name for k in after}
    assert {k: after[k] for k in kept} == kept  # finished images were not redone


def test_from_redoes_a_stage_and_its_readers(scenes, tmp_path):
    pipeline, work = write_pipeline(tmp_path / "p.py"), tmp_path / "work"
    assert run(pipeline, scenes, work).returncode == 0
    before = files(work / "whole")
    result = run(pipeline, scenes, work, "--from", "crf", "--to", "table")
    assert result.returncode == 0, result.stderr
    assert actions(work) == {"crf": "redo", "vote": "redo", "check": "skipped", "table": "redo"}
    assert files(work / "whole") == before
    dry = run(pipeline, scenes, work, "--dry-run")
    assert dry.returncode == 0 and "report" in dry.stdout and "skip" in dry.stdout


@pytest.mark.parametrize("edit, message", [
    (("--from", "nope"), "no stage 'nope'"),
    (("--set", "crf.iterationz=3"), "has no parameter 'iterationz'; did you mean 'iterations'"),
])
def test_errors_are_one_line(scenes, tmp_path, edit, message):
    pipeline, work = write_pipeline(tmp_path / "p.py"), tmp_path / "work"
    result = run(pipeline, scenes, work, *edit)
    assert result.returncode == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bad_pipelines_are_refused(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("stages = [dict(name='a', step='refine', input='@b', type='crf'), dict(name='b', step='source', "
                   "type='background')]")
    with pytest.raises(Exception, match="reads @b, which is not an earlier stage"):
        load_pipeline(bad)
    bad.write_text("stages = [dict(name='a', step='train')]")
    with pytest.raises(Exception, match="steps: source, refine"):
        load_pipeline(bad)


NO_CLI = """
import sys
from plabel_kit.pipeline import Runner, load_pipeline
work = sys.argv[3]
actions = Runner(load_pipeline(sys.argv[1]), sys.argv[2], work, progress=False).run()
print(sorted(actions.items()), "plabel_kit.cli" in sys.modules)
"""


def test_a_pipeline_runs_without_the_cli(scenes, tmp_path):
    """The core runs component stages with no command line loaded."""
    pipeline = tmp_path / "p.py"
    pipeline.write_text("stages = [dict(name='bg', step='source', type='background'),\n"
                        "          dict(name='vote', step='combine', inputs=['@bg', '@bg'], type='vote')]\n")
    result = subprocess.run([sys.executable, "-c", NO_CLI, str(pipeline), str(scenes), str(tmp_path / "work")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[('bg', 'run'), ('vote', 'run')] False"


def test_command_stages_need_the_runner_the_cli_hands_in(scenes, tmp_path):
    from plabel_kit import PlabelError
    from plabel_kit.pipeline import Runner

    pipeline = tmp_path / "p.py"
    pipeline.write_text("stages = [dict(name='bg', step='source', type='background'),\n"
                        "          dict(name='say', step='command', run=[['hello', '{out}'], ['bye']])]\n")
    work = tmp_path / "work"
    with pytest.raises(PlabelError, match="stage 'say': a command stage needs a command runner"):
        Runner(load_pipeline(pipeline), scenes, work, progress=False).run()
    assert not work.exists()  # refused by the checks, before anything ran
    # a stage beyond --to needs no command runner
    assert Runner(load_pipeline(pipeline), scenes, work, progress=False).run(stop="bg") == {"bg": "run",
                                                                                          "say": "after"}

    class Commands:
        def __init__(self):
            self.checked, self.ran = [], []

        def check(self, args):
            self.checked.append(args)
            if args[0] not in ("hello", "bye"):
                raise PlabelError(f"no command {args[0]}")

        def run(self, args):
            self.ran.append(args)
            print("printed by", args[0])  # goes to the log

    commands = Commands()
    Runner(load_pipeline(pipeline), scenes, work, progress=False, commands=commands).run()
    assert commands.ran == [["hello", str(work / "say")], ["bye"]]
    assert commands.checked == commands.ran
    assert "printed by hello" in (work / "pipeline.log").read_text()
    pipeline.write_text(pipeline.read_text().replace("['bye']", "['byebye']"))
    with pytest.raises(PlabelError, match=f"{pipeline}: stage 'say': no command byebye"):
        Runner(load_pipeline(pipeline), scenes, work, progress=False, commands=commands).run()


def test_shipped_pipelines_load_and_name_their_stages():
    seqmerge = load_pipeline(REPO / "configs" / "pipelines" / "evolving_seqmerge.py")
    names = seqmerge.names()
    assert names[:5] == ["sequences", "tasks", "manual", "cam", "seqmerge"]
    assert sum(n.startswith("seg_") for n in names) == 10  # 5 Table 1 rows x 2 encoders
    assert seqmerge.stage("seqmerge").needs == ["cam", "manual", "sequences"]
    isle = load_pipeline(REPO / "configs" / "pipelines" / "voc_isle.py")
    assert {"cam", "crf", "randomwalk", "irnet", "csrm", "isle", "deeplabv3plus"} <= set(isle.names())
    assert isle.stage("isle").needs == ["crf", "csrm", "irnet_crf", "randomwalk_crf"]


@pytest.mark.parametrize("name", ["evolving_seqmerge.py", "evolving_seqmerge_small.py"])
def test_seed_000_cam_labels_are_thresholded_twice_and_crf_refined(name):
    """Seed 000 Sec. 3.2: CAM labels from a foreground and a background threshold with the
    band between ignored, refined by the dense CRF (IRN's IR labels), for the CAM row and
    for the merge; the carried masks refined by the CRF are a row of their own."""
    pipeline = load_pipeline(REPO / "configs" / "pipelines" / name)
    assert pipeline.stage("cam").spec["mode"] == "ir_labels"
    assert pipeline.stage("seqmerge").spec["cam"] == "@cam"
    crf = pipeline.stage("seqmerge_crf")
    assert crf.spec["type"] == "crf" and crf.spec["input"] == "@seqmerge" and crf.spec.get("recipe") == "label"


# ---- the report in a real browser ------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(tmp_path, *args) -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (make test installs Debian's chromium package)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    profile = tmp_path / f"profile{time.monotonic_ns()}"
    result = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_report_opens_in_headless_chromium_with_its_images(scenes, tmp_path):
    pipeline, work = write_pipeline(tmp_path / "p.py"), tmp_path / "work"
    assert run(pipeline, scenes, work).returncode == 0
    page = work / "report" / "index.html"
    html = page.read_text()
    assert "Per-class IoU" in html and "Provenance" in html and "vote" in html
    pictures = list((work / "report" / "images").glob("*.png"))
    assert len(pictures) == 4 * 4  # 4 images x (image, ground truth, crf, vote)

    dom = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    assert f'data-images-loaded="{len(pictures)}/{len(pictures)}"' in dom

    shot = tmp_path / "shot.png"
    chromium(tmp_path, "--virtual-time-budget=5000", "--window-size=1200,1400", f"--screenshot={shot}", page.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    coloured = (pixels.max(axis=2).astype(int) - pixels.min(axis=2)) > 60  # saturated: overlays, not text
    assert coloured.mean() > 0.03, f"only {coloured.mean():.3f} of the screenshot is coloured"

    # the same page without its pictures: the browser sees the difference, and says so
    shutil.rmtree(work / "report" / "images")
    dom = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    assert f'data-images-loaded="0/{len(pictures)}"' in dom


def test_report_command(scenes, tmp_path):
    pipeline, work = write_pipeline(tmp_path / "p.py"), tmp_path / "work"
    assert run(pipeline, scenes, work, "--to", "crf").returncode == 0
    out = tmp_path / "rep"
    result = run_plabel("report", "--data", scenes, "--labels", f"whole image={work / 'whole'}", "--labels",
                        work / "crf", "--out", out, "--n", 3)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert list(report["labels"]) == ["whole image", "crf"] and len(report["images"]) == 3
    missing = run_plabel("report", "--data", scenes, "--labels", tmp_path / "nothing", "--out", out)
    assert missing.returncode == 2 and "not a label set folder" in missing.stderr


# ---- the demo -------------------------------------------------------------------------

DEMO = ("demo", "--n", "60", "--iters", "20")


def demo_table(out) -> dict:
    return json.loads((Path(out) / "work" / "table" / "results.json").read_text())


def test_demo_killed_half_way_resumes_to_the_same_table(tmp_path):
    whole = tmp_path / "whole"
    start = time.perf_counter()
    result = run_plabel(*DEMO, "--out", whole)
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Table 1" in result.stdout and "| U-Net VGG-16 | ours + manual |" in result.stdout
    assert (whole / "work" / "report" / "index.html").is_file()
    assert (whole / "work" / "test_report" / "index.html").is_file()
    table = demo_table(whole)
    assert len(table["segmenters"]) == 10
    assert table["labels"]["sequence merge"]["miou"] > table["labels"]["CAM"]["miou"]

    killed = tmp_path / "killed"
    exe = Path(sys.executable).parent / "plabel"
    process = subprocess.Popen([str(exe), *DEMO, "--out", str(killed)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=dict(os.environ, PLABEL_QUIET="1"),
                               start_new_session=True)
    marker = killed / "work" / "seg_vgg16_cam" / "stage.json"
    deadline = time.monotonic() + 4 * seconds + 60
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, "the demo finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "work" / "table").exists()
    resumed = run_plabel(*DEMO, "--out", killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[cam] finished, skipped" in resumed.stdout and "[seg_vgg16_manual] finished, skipped" in resumed.stdout
    assert demo_table(killed)["segmenters"] == table["segmenters"]
    assert demo_table(killed)["labels"] == {k: {**v, "path": str(killed / "work" / Path(v["path"]).name)}
                                            for k, v in table["labels"].items()}


def test_a_second_run_on_the_same_work_dir_stops(scenes, tmp_path):
    import fcntl

    pipeline, work = write_pipeline(tmp_path / "p.py"), tmp_path / "work"
    work.mkdir()
    with open(work / ".lock", "a+") as lock:  # as a running `plabel run` holds it
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write("4242")
        lock.flush()
        busy = run(pipeline, scenes, work)
        assert busy.returncode == 1 and "another process (pid 4242) is writing this pipeline work dir" in busy.stderr
        assert not (work / "bg").exists()
    assert run(pipeline, scenes, work, "--to", "bg").returncode == 0  # released with its holder
