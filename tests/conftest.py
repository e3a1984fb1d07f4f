import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PLABEL_SHARED", REPO.parent / "shared"))
VOC_SAMPLES = SHARED / "data" / "voc_samples"
VOC_IDS = sorted(p.name[:-9] for p in VOC_SAMPLES.glob("*_0img.png"))

os.environ.setdefault("PLABEL_QUIET", "1")


def write_index(path: Path, rows, classes, fieldnames=("id", "image", "labels", "mask", "subject", "time")):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "classes.json").write_text(json.dumps({"classes": list(classes)}))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return path


@pytest.fixture
def voc_csv(tmp_path):
    """The seven VOC samples as a CSV dataset (absolute paths into shared/)."""
    from plabel_kit.datasets import VOC_CLASSES

    if not VOC_SAMPLES.is_dir():
        pytest.fail(f"VOC samples not found at {VOC_SAMPLES} (set PLABEL_SHARED)")
    rows = []
    for image_id in VOC_IDS:
        mask = np.asarray(Image.open(VOC_SAMPLES / f"{image_id}_5labels.png"))
        names = ";".join(VOC_CLASSES[c] for c in np.unique(mask) if 0 < c < 255)
        rows.append({"id": image_id, "image": str(VOC_SAMPLES / f"{image_id}_0img.png"),
                     "labels": names, "mask": str(VOC_SAMPLES / f"{image_id}_5labels.png")})
    return write_index(tmp_path / "voc" / "index.csv", rows, VOC_CLASSES)


@pytest.fixture(scope="session")
def scenes(tmp_path_factory):
    """A small synthetic scenes dataset, shared by the session (read only)."""
    from plabel_kit.synth import make_scenes

    return make_scenes(tmp_path_factory.mktemp("scenes"), n=24, size=64, seed=3, progress=False)


@pytest.fixture
def tiny(tmp_path):
    """Three hand-made 8x6 images with masks, classes background/cat/dog; returns index path."""
    root = tmp_path / "tiny"
    (root / "img").mkdir(parents=True)
    rows = []
    rng = np.random.default_rng(0)
    for k, present in enumerate([(1,), (2,), (1, 2)]):
        mask = np.zeros((6, 8), np.uint8)
        for c in present:
            mask[:, (c - 1) * 4:(c - 1) * 4 + 3] = c
        Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).save(root / "img" / f"t{k}.png")
        Image.fromarray(mask).save(root / "img" / f"t{k}_m.png")
        rows.append({"id": f"t{k}", "image": f"img/t{k}.png", "mask": f"img/t{k}_m.png",
                     "labels": ";".join(["cat", "dog"][c - 1] for c in present)})
    return write_index(root / "index.csv", rows, ["background", "cat", "dog"])


def run_plabel(*args, env=None, check=False, cwd=None):
    """The installed ``plabel`` console script, as a user runs it."""
    full_env = dict(os.environ, **(env or {}))
    exe = Path(sys.executable).parent / "plabel"
    result = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True,
                            env=full_env, cwd=cwd)
    if check and result.returncode != 0:
        raise AssertionError(f"plabel {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def cli_run():
    """Invoke the CLI in-process (plugins from entry points, as ``plabel`` does)."""
    from click.testing import CliRunner

    from plabel_kit.cli import _load_plugin_commands, cli

    _load_plugin_commands()
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return invoke


def interrupt_training(args, out: Path) -> int:
    """Run ``plabel ARGS --out OUT`` and SIGKILL it as soon as its first epoch checkpoint
    (OUT/work/latest.pth) exists; returns the epoch that checkpoint holds."""
    import signal
    import time

    import torch

    exe = Path(sys.executable).parent / "plabel"
    proc = subprocess.Popen([str(exe), *map(str, args), "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    latest = Path(out) / "work" / "latest.pth"
    while not latest.exists():
        assert proc.poll() is None, "training ended before it could be interrupted"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return torch.load(latest, weights_only=False)["epoch"]


def child_cpu_seconds() -> float:
    """CPU seconds used so far by this process's finished children (the CLI runs a test starts)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def same_weights(a: Path, b: Path) -> bool:
    """Whether two final checkpoints hold bit-identical model weights."""
    import torch

    a, b = (torch.load(p, weights_only=False)["model"] for p in (a, b))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

