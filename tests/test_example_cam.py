"""The example plugin's ``lse_cam`` (examples/plabel-example-plugin/plabel_example_cam.py): a
method written only against plabel_kit and its toolkit, installed as a third party installs
it, trained and scored through the CLI on synthetic scenes."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from plabel_kit import LabelSet, open_dataset
from plabel_kit.synth import make_scenes
from tests.conftest import REPO, child_cpu_seconds, run_plabel

EXAMPLE = REPO / "examples" / "plabel-example-plugin"
# CPU-sized: 96 scenes of 64 px, the quarter-width ResNet-18, 30 epochs of 64 px crops
SMALL = ["--set", "backbone=resnet18_small", "--set", "crop_size=64", "--set", "resize_long=(48,80)",
         "--set", "train_batch_size=8", "--set", "epochs=30", "--set", "lr=0.1", "--set", "scales=(1.0,)",
         "--set", "device=cpu"]
# one thread: oneDNN's sums (so the weights) depend on the thread count, and 2 busy cores
# run one thread per process far faster than two
ENV = {"PLABEL_QUIET": "0", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The example plugin pip-installed into its own folder: {"PYTHONPATH": folder}."""
    folder = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-cache-dir", "--target", str(folder), str(EXAMPLE)], check=True, capture_output=True)
    return {"PYTHONPATH": str(folder)}


@pytest.fixture(scope="module")
def trained(site, tmp_path_factory):
    root = tmp_path_factory.mktemp("lse")
    index = make_scenes(root / "scenes", n=96, size=64, seed=0, progress=False)
    start, cpu_start = time.perf_counter(), child_cpu_seconds()
    result = run_plabel("source", "lse_cam", "--data", index, "--out", root / "lse", *SMALL,
                        env={**site, **ENV}, check=True)
    return {"index": index, "root": root, "labels": root / "lse", "stderr": result.stderr,
            "seconds": time.perf_counter() - start, "cpu_seconds": child_cpu_seconds() - cpu_start}


def _miou(index, labels) -> float:
    run_plabel("evaluate", "--data", index, "--labels", labels, "--json", labels / "eval.json", check=True)
    return json.loads((labels / "eval.json").read_text())["miou"]


def test_registers_without_importing_torch(site):
    rows = json.loads(run_plabel("components", "--json", env=site, check=True).stdout)
    assert {"lse_cam", "center_box"} <= {r["name"] for r in rows}
    probe = "import sys; from plabel_kit import get_registry; get_registry(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**os.environ, **site}).stdout
    assert out.strip() == "False"  # every plabel command loads every plugin: torch stays inside methods


def test_lse_cam_trains_labels_and_beats_all_background(trained, capsys):
    index, root = trained["index"], trained["root"]
    run_plabel("source", "background", "--data", index, "--out", root / "background", check=True)
    run_plabel("source", "whole_image", "--data", index, "--out", root / "whole", "--set", "multi=first", check=True)
    background, whole, lse = _miou(index, root / "background"), _miou(index, root / "whole"), _miou(index, trained["labels"])
    with capsys.disabled():
        print(f"\nlse_cam (resnet18_small, 30 epochs, 96 scenes of 64 px): trained+labelled in "
              f"{trained['seconds']:.0f} s wall, {trained['cpu_seconds']:.0f} s CPU; mIoU {100 * lse:.1f} "
              f"vs all background {100 * background:.1f}, whole image {100 * whole:.1f}")
    assert "LSE-CAM epoch 30/30: loss" in trained["stderr"]  # the toolkit's loop ran every epoch
    assert lse > 1.5 * background and lse > whole  # measured: 24.2 vs 12.4 and 6.1
    assert trained["cpu_seconds"] < 300  # measured about 20 s of CPU (one thread)

    ls, dataset = LabelSet(trained["labels"]), open_dataset(index)
    assert ls.manifest["counts"] == {"labels": 96, "scores": 96}
    assert ls.manifest["producer"]["type"] == "lse_cam" and ls.manifest["producer"]["config"]["r"] == 5.0
    peaks = []
    for sample in list(dataset)[:8]:
        pseudo = ls.read(sample.id)
        assert pseudo.keys.tolist() == list(sample.classes)
        assert pseudo.scores.shape == (len(sample.classes), 64, 64)
        assert set(np.unique(pseudo.label).tolist()) <= {0, *sample.classes}
        peaks += pseudo.scores.reshape(len(sample.classes), -1).max(1).tolist()
    # each plane divided by its max (a class the small model sees nowhere stays all 0)
    assert all(abs(p - 1) < 1e-3 or p == 0 for p in peaks) and sum(p > 0 for p in peaks) > len(peaks) / 2


def test_checkpoint_skips_training_and_relabels_identically(trained, site):
    out = trained["root"] / "again"
    result = run_plabel("source", "lse_cam", "--data", trained["index"], "--out", out, *SMALL, "--checkpoint",
                        trained["labels"] / "work" / "lse_cam.pth", env={**site, **ENV}, check=True)
    assert "LSE-CAM epoch" not in result.stderr
    ref, again = LabelSet(trained["labels"]), LabelSet(out)
    for image_id in ref.ids()[:10]:
        assert np.array_equal(ref.read_label(image_id), again.read_label(image_id))


def test_docs_show_the_example_as_it_is():
    """docs/plugins.md shows the whole method (under 100 lines) and the CPU command tested here."""
    code = (EXAMPLE / "plabel_example_cam.py").read_text()
    docs = (REPO / "docs" / "plugins.md").read_text()
    section = docs.split("## A new method on the toolkit", 1)[1]
    assert f"```python\n{code}```" in section
    assert len(code.splitlines()) < 100
    command = section.split("plabel source lse_cam", 1)[1].split("```", 1)[0]
    for key, value in zip(SMALL[::2], SMALL[1::2]):
        assert value == "device=cpu" or f"{key} {value}" in command or f'{key} "{value}"' in command, value
