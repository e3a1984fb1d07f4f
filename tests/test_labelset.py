import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from plabel_kit import LabelSet, LabelSetError, LabelSetWriter, PseudoLabel
from plabel_kit.arrays import voc_palette

CLASSES = ["background", "a", "b"]


def _pseudo(k, size=(20, 30)):
    rng = np.random.default_rng(k)
    label = rng.integers(0, 3, size, dtype=np.uint8)
    label[0, :3] = 255
    scores = rng.random((2, *size), dtype=np.float32)
    return PseudoLabel(label, scores, np.array([1, 2]))


def test_round_trip(tmp_path):
    writer = LabelSetWriter(tmp_path / "ls", {"type": "t", "config": {"x": 1}}, CLASSES, voc_palette())
    for k in range(3):
        writer.write(f"im{k}", _pseudo(k))
    manifest = writer.finish()
    assert manifest["counts"] == {"labels": 3, "scores": 3} and manifest["complete"]
    ls = LabelSet(tmp_path / "ls")
    assert ls.ids() == ["im0", "im1", "im2"]
    got = ls.read("im1")
    want = _pseudo(1)
    assert np.array_equal(got.label, want.label)
    assert got.keys.tolist() == [1, 2]
    assert np.allclose(got.scores, want.scores, atol=1e-3)  # float16 on disk
    from PIL import Image

    with Image.open(ls.label_path("im1")) as im:
        assert im.mode == "P"
        assert im.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
    assert not (tmp_path / "ls" / ".tmp").exists()


def test_refuses_other_producer_and_resumes_same(tmp_path):
    producer = {"type": "t", "config": {"x": 1}, "version": "1"}
    LabelSetWriter(tmp_path / "ls", producer, CLASSES, voc_palette()).write("a", _pseudo(0))
    again = LabelSetWriter(tmp_path / "ls", dict(producer, version="2"), CLASSES, voc_palette())
    assert again.done("a") and not again.done("b")
    with pytest.raises(LabelSetError, match="refusing to mix"):
        LabelSetWriter(tmp_path / "ls", {"type": "t", "config": {"x": 2}}, CLASSES, voc_palette())
    with pytest.raises(LabelSetError, match="classes"):
        LabelSetWriter(tmp_path / "ls", producer, ["background", "z"], voc_palette())


def test_npz_bytes_are_deterministic(tmp_path):
    for name in ("x", "y"):
        w = LabelSetWriter(tmp_path / name, {"type": "t"}, CLASSES, voc_palette())
        w.write("im", _pseudo(5))
        time.sleep(1.1)  # a zip timestamp would differ now
    assert (tmp_path / "x/scores/im.npz").read_bytes() == (tmp_path / "y/scores/im.npz").read_bytes()


WRITER_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    from plabel_kit import LabelSetWriter, PseudoLabel
    from plabel_kit.arrays import voc_palette
    out, n = sys.argv[1], int(sys.argv[2])
    w = LabelSetWriter(out, {"type": "kill-test"}, ["background", "a", "b"], voc_palette())
    for k in range(n):
        if w.done(f"im{k:03d}"):
            continue
        rng = np.random.default_rng(k)
        label = rng.integers(0, 3, (700, 900), dtype=np.uint8)
        scores = rng.random((2, 700, 900), dtype=np.float32)
        w.write(f"im{k:03d}", PseudoLabel(label, scores, np.array([1, 2])))
        print(k, flush=True)
    w.finish()
""")


def _run_writer(out, n):
    return subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(out), str(n)],
                            stdout=subprocess.PIPE, text=True)


def test_killed_write_leaves_no_partial_file_and_resumes_identically(tmp_path):
    n = 12
    reference = tmp_path / "reference"
    assert _run_writer(reference, n).wait() == 0

    killed = tmp_path / "killed"
    proc = _run_writer(killed, n)
    for _ in range(3):  # let a few labels finish, then kill mid-way through the next
        proc.stdout.readline()
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = sorted(p.name for p in (killed / "labels").iterdir())
    assert 3 <= len(written) < n
    # every file readers can see is whole: it decodes and equals the reference bytes
    ls = LabelSet(killed)
    for image_id in ls.ids():
        assert ls.label_path(image_id).read_bytes() == (reference / "labels" / f"{image_id}.png").read_bytes()
        ls.read(image_id)
    for p in (killed / "scores").iterdir():
        assert p.read_bytes() == (reference / "scores" / p.name).read_bytes()
    assert not json.loads((killed / "manifest.json").read_text())["complete"]

    assert _run_writer(killed, n).wait() == 0
    for folder in ("labels", "scores"):
        names = sorted(p.name for p in (reference / folder).iterdir())
        assert names == sorted(p.name for p in (killed / folder).iterdir())
        for name in names:
            assert (killed / folder / name).read_bytes() == (reference / folder / name).read_bytes()
    assert not (killed / ".tmp").exists()
    assert json.loads((killed / "manifest.json").read_text())["counts"] == {"labels": n, "scores": n}


def test_runtime_parameters_may_change_between_resumes(tiny, tmp_path):
    from dataclasses import dataclass

    from plabel_kit import LabelSource, open_dataset
    from plabel_kit.stages import run_source

    @dataclass
    class Slow(LabelSource):
        """All background; ``workers`` changes nothing in the output."""

        level: int = 0
        workers: int = 1
        runtime = ("workers",)
        name = "slow"

        def predict(self, samples):
            return [PseudoLabel(np.full(s.image.shape[:2], self.level, np.uint8)) for s in samples]

    dataset = open_dataset(tiny)
    run_source(Slow(workers=1), dataset.subset(["t0"]), tmp_path / "ls", progress=False)
    run_source(Slow(workers=4), dataset, tmp_path / "ls", progress=False)
    manifest = json.loads((tmp_path / "ls" / "manifest.json").read_text())
    assert manifest["producer"]["config"] == {"level": 0}
    assert manifest["producer"]["runtime"] == {"workers": 1}
    with pytest.raises(LabelSetError, match="refusing to mix"):
        run_source(Slow(level=1), dataset, tmp_path / "ls", progress=False)


def _record(images):
    """A dataset record (see labelset.dataset_record) of {id: image file}."""
    from plabel_kit.labelset import file_identity

    return {"fingerprint": "f", "identity": {i: [*file_identity(p), str(p)] for i, p in images.items()}}


def test_resume_checks_images_of_shared_ids_and_records_new_ones(tmp_path):
    import shutil

    a, b, c = (tmp_path / f"{n}.bin" for n in "abc")
    a.write_bytes(b"x" * 10)
    b.write_bytes(b"y" * 10)  # same size as a, other bytes
    c.write_bytes(b"z" * 20)
    out = tmp_path / "ls"
    LabelSetWriter(out, {"type": "t"}, CLASSES, voc_palette(), _record({"i0": a})).write("i0", _pseudo(0))
    grown = LabelSetWriter(out, {"type": "t"}, CLASSES, voc_palette(), _record({"i0": a, "i1": c}))
    grown.close()
    assert set(LabelSet(out).manifest["dataset"]["identity"]) == {"i0", "i1"}
    with pytest.raises(LabelSetError, match=r"other images: id 'i0' image .*a\.bin \(10 bytes, hash \w+\) vs "
                                            r".*b\.bin \(same size, hash \w+\)"):
        LabelSetWriter(out, {"type": "t"}, CLASSES, voc_palette(), _record({"i0": b}))
    with pytest.raises(LabelSetError, match=r"id 'i1' image .*c\.bin \(20 bytes\) vs .*a\.bin \(10 bytes\)"):
        LabelSetWriter(out, {"type": "t"}, CLASSES, voc_palette(), _record({"i1": a}))
    moved = tmp_path / "moved.bin"
    shutil.copy(a, moved)  # the same file elsewhere: the same image
    LabelSetWriter(out, {"type": "t"}, CLASSES, voc_palette(), _record({"i0": moved})).close()


def test_a_set_written_before_identities_were_recorded_still_resumes(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"x")
    out = tmp_path / "ls"
    LabelSetWriter(out, {"type": "t"}, CLASSES, voc_palette(), {"fingerprint": "f"}).finish()
    manifest = json.loads((out / "manifest.json").read_text())
    assert "identity" not in manifest["dataset"]
    LabelSetWriter(out, {"type": "t"}, CLASSES, voc_palette(), _record({"i0": a})).close()
    # nothing recorded, nothing claimed: the old labels' images stay unknown
    assert "identity" not in json.loads((out / "manifest.json").read_text())["dataset"]


def test_folder_lock_excludes_other_processes_not_this_one(tmp_path):
    import os

    from plabel_kit.labelset import exclusive_folder

    out = tmp_path / "ls"
    first = LabelSetWriter(out, {"type": "t"}, CLASSES, voc_palette())
    second = LabelSetWriter(out, {"type": "t"}, CLASSES, voc_palette())  # same process: counted
    assert (out / ".lock").read_text().strip() == str(os.getpid())
    holder = "from plabel_kit.labelset import exclusive_folder\nimport sys\nwith exclusive_folder(sys.argv[1]): pass"
    other = subprocess.run([sys.executable, "-c", holder, str(out)], capture_output=True, text=True)
    assert other.returncode == 1 and f"another process (pid {os.getpid()}) is writing this folder" in other.stderr
    second.close()
    assert (out / ".lock").exists()
    first.finish()
    assert not (out / ".lock").exists()
    assert subprocess.run([sys.executable, "-c", holder, str(out)]).returncode == 0
    with exclusive_folder(out):  # free again for this process too
        assert (out / ".lock").exists()
    assert not (out / ".lock").exists()


def test_a_forked_child_does_not_keep_the_parents_lock(tmp_path):
    """DataLoader workers and process pools are forked while a writer holds its folder: when
    the parent dies first, the lock must die with it."""
    import subprocess
    import sys
    import textwrap

    from plabel_kit.labelset import FolderLock

    folder = tmp_path / "set"
    folder.mkdir()
    script = textwrap.dedent(f"""
        import os, time
        from plabel_kit.labelset import FolderLock
        FolderLock.for_folder({str(folder)!r}, "label set").acquire()
        if os.fork() == 0:          # a worker that outlives its parent
            os.close(1); os.close(2)
            time.sleep(20)
            os._exit(0)
        print("locked", flush=True)
        os._exit(0)                 # the parent dies without releasing
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "locked" in proc.stdout, proc.stderr
    lock = FolderLock.for_folder(folder, "label set").acquire()  # the orphaned worker holds nothing
    lock.release()
