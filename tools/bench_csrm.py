"""CSRM benchmarks on synthetic scenes (``plabel_kit.synth.make_scenes``), in one run each.

time     Seconds per training epoch of CSRM (its warm-up epoch, then a full epoch with all
         five losses) against a CAM epoch (IRN's classifier step, the reference way) on the
         same fixed set, same backbone, crop and batch; records the device, AMP and torch.
         The CSRM paper reports 15.7 min/epoch on VOC train (ResNeSt-269, crop 512, batch 32).

             python tools/bench_csrm.py time --n 256 --size 512 --backbone resnet50_v1c --batch 32
             python tools/bench_csrm.py time --n 64 --size 128 --backbone resnet18_small --batch 16 \\
                 --set output_stride=8 --set decoder_channels=64      # a CPU-sized check

compare  Pseudo-label quality for the same backbone, images and epochs: from one CAM trained
         E1 epochs (configs/sources/cam_resnet18_cpu.py), E2 more epochs of CAM (its own
         resume, the schedule of an E1 + E2 run) against E2 epochs of CSRM warm-started from
         it (configs/sources/csrm_cpu.py), both without CRF; mIoU at each method's own
         threshold and at the best of the background-threshold sweep.

             python tools/bench_csrm.py compare --n 200 --size 128 --cam-epochs 20 --csrm-epochs 5

         ``--data INDEX --limit N`` runs it on N evenly spaced images of a CSV index instead
         (read in place; a subset index with absolute paths is written to the work folder),
         with ``--cam-set`` / ``--set`` adapting crop and scales to its images, e.g. the real
         frames of camvid_small:

             python tools/bench_csrm.py compare --data ../shared/data/camvid_small/index.csv \
                 --limit 120 --cam-epochs 16 --csrm-epochs 5 --cam-set crop_size=160 \
                 --cam-set "resize_long=(160,320)" --set crop_size=160 --set "resize_long=(160,320)"

         Also prints CSRM's per-epoch losses (the pixel contrast among them) and how many
         classes held contrast anchors per step.

Prints markdown tables for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CAM_CONFIG = REPO / "configs" / "sources" / "cam_resnet18_cpu.py"
CSRM_CONFIG = REPO / "configs" / "sources" / "csrm_cpu.py"


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def parse_sets(items) -> dict:
    from plabel_kit.commands import parse_overrides

    return parse_overrides(items)


# ---- time ------------------------------------------------------------------------------

def time_cam_epoch(dataset, args, device) -> float:
    """Seconds of a CAM classifier epoch (plabel_cam.train) with the same crops and batch: the
    second of two, so start-up costs (allocator, kernel selection) stay out, as for CSRM."""
    import torch

    from plabel_kit.toolkit.cam import CamNet
    from plabel_cam.train import TrainConfig, train

    model = CamNet(args.backbone, dataset.num_classes - 1, args.output_stride)
    config = TrainConfig(2, args.batch, args.size, (args.size * 5 // 8, args.size * 5 // 4), 0.01, 1e-4, 0.9,
                         0.9, 10.0, 0, args.workers)
    ends = []

    def stamp(_message):
        if device.type == "cuda":
            torch.cuda.synchronize()
        ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as work:
        train(model, dataset, config, Path(work), device, log=stamp)
    return ends[1] - ends[0]


def time_csrm_epochs(dataset, args, device):
    """(the Trainer's per-epoch records (seconds and losses) for ``--epochs`` epochs, the source)."""
    from plabel_csrm.model import CsrmNet
    from plabel_csrm.train import Trainer
    from plabel_kit import get_registry

    params = {"backbone": args.backbone, "output_stride": args.output_stride, "epochs": args.epochs,
              "warmup_epochs": 1, "train_batch_size": args.batch, "crop_size": args.size,
              "resize_long": (args.size * 5 // 8, args.size * 5 // 4), "num_workers": args.workers,
              "crf": False, "device": str(device), **parse_sets(args.set)}
    source = get_registry().build("label_source", {"type": "csrm", **params})
    model = CsrmNet(source.backbone, dataset.num_classes - 1, source.output_stride, source.decoder_channels,
                    source.skip_channels, tuple(source.aspp_dilations), source.representation_dim, source.dropout)
    with tempfile.TemporaryDirectory() as work:
        trainer = Trainer(model, source, dataset, Path(work), device, classifier_is_new=True, log=lambda *_: None)
        trainer.run()
    return trainer.history, source


def run_time(args):
    import torch

    from plabel_kit.toolkit.runtime import pick_device
    from plabel_kit import open_dataset
    from plabel_kit.synth import make_scenes

    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as root:
        dataset = open_dataset(make_scenes(Path(root) / "scenes", n=args.n, size=args.size, seed=0, progress=False))
        cam = time_cam_epoch(dataset, args, device)
        history, source = time_csrm_epochs(dataset, args, device)
    amp = "on" if source.amp and device.type == "cuda" else "off"
    print(f"\ntorch {torch.__version__}; {args.n} scenes of {args.size} px; c2s_crf {source.c2s_crf}\n")
    print("| device | backbone | crop | batch | AMP | CAM s/epoch | CSRM warm-up s/epoch | CSRM s/epoch | "
          "CSRM / CAM |")
    print("|---|---|---|---|---|---|---|---|---|")
    full = [h["seconds"] for h in history[1:]] or [history[0]["seconds"]]
    csrm = sum(full) / len(full)
    print(f"| {device_name(device)} | {source.backbone} OS{source.output_stride} | {args.size} | {args.batch} | "
          f"{amp} | {cam:.1f} | {history[0]['seconds']:.1f} | {csrm:.1f} | {csrm / cam:.1f}x |")


# ---- compare ---------------------------------------------------------------------------

def label(kind: str, params: dict, index: Path, out: Path) -> float:
    """Train (or reuse) and label with a source; returns the wall seconds."""
    from plabel_kit import get_registry, open_dataset
    from plabel_kit.stages import run_source

    start = time.perf_counter()
    source = get_registry().build("label_source", {"type": kind, **params})
    run_source(source, open_dataset(index), out, progress=False)
    return time.perf_counter() - start


def scores(index: Path, out: Path) -> tuple[float, float, float]:
    """(mIoU of the labels, best sweep mIoU, its threshold)."""
    from plabel_kit import LabelSet, open_dataset
    from plabel_kit.evaluation import evaluate

    result = evaluate(open_dataset(index), LabelSet(out), sweep=True, progress=False)
    return result["miou"], result["sweep"]["best_miou"], result["sweep"]["best_threshold"]


def subset_index(source: Path, limit: int, out: Path) -> Path:
    """A CSV index of ``limit`` evenly spaced rows of ``source`` (paths made absolute, so the
    images are read where they are), with its classes.json; returns its path."""
    import csv

    with source.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames, list(reader)
    if limit and limit < len(rows):
        rows = [rows[round(i * len(rows) / limit)] for i in range(limit)]
    for row in rows:
        for key in ("image", "mask"):
            if row.get(key):
                row[key] = str((source.parent / row[key]).resolve())
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(source.parent / "classes.json", out / "classes.json")
    with (out / "index.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return out / "index.csv"


def run_compare(args):
    from plabel_kit.registry import load_config
    from plabel_kit.synth import make_scenes

    root = Path(args.work or tempfile.mkdtemp(prefix="bench_csrm_"))
    if args.data:
        index = subset_index(Path(args.data).resolve(), args.limit, root / "data")
        what = f"{args.data}, {args.limit or 'all'} images"
    else:
        index = make_scenes(root / "scenes", n=args.n, size=args.size, seed=args.seed, progress=False)
        what = f"{args.n} scenes of {args.size} px (seed {args.seed})"
    cam_params, csrm_params = load_config(CAM_CONFIG), load_config(CSRM_CONFIG)
    cam_params.update(parse_sets(args.cam_set))
    csrm_params.update(parse_sets(args.set))
    start, more = args.cam_epochs, args.cam_epochs + args.csrm_epochs
    rows = [(f"CAM {start} epochs (the start)", label("cam", {**cam_params, "epochs": start}, index, root / "cam"),
             root / "cam")]
    # CAM's own resume: the start's epoch checkpoint, continued to `more` epochs
    (root / "cam_more" / "work").mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "cam" / "work" / "latest.pth", root / "cam_more" / "work" / "latest.pth")
    rows.append((f"CAM {start} + CAM {args.csrm_epochs} epochs",
                 label("cam", {**cam_params, "epochs": more}, index, root / "cam_more"), root / "cam_more"))
    warm = str(root / "cam" / "work" / "cam_final.pth")
    seconds = label("csrm", {**csrm_params, "epochs": args.csrm_epochs, "cam_checkpoint": warm, "crf": False},
                    index, root / "csrm")
    rows.append((f"CAM {start} + CSRM {args.csrm_epochs} epochs, output=cam", seconds, root / "csrm"))
    final = str(root / "csrm" / "work" / "csrm_final.pth")
    seconds = label("csrm", {**csrm_params, "checkpoint": final, "output": "seg", "crf": False}, index,
                    root / "csrm_seg")
    rows.append((f"CAM {start} + CSRM {args.csrm_epochs} epochs, output=seg (labelling only)", seconds,
                 root / "csrm_seg"))
    print(f"\n{what}, no CRF; seconds = training after the start + labelling; work in {root}\n")
    print("| labels | seconds | mIoU (own threshold) | best sweep mIoU (threshold) |")
    print("|---|---|---|---|")
    for name, secs, out in rows:
        miou, best, threshold = scores(index, out)
        print(f"| {name} | {secs:.0f} | {100 * miou:.1f} | {100 * best:.1f} ({threshold:.2f}) |")
    print_history(root / "csrm" / "work" / "csrm_final.pth")


def print_history(checkpoint: Path) -> None:
    """CSRM's per-epoch losses from its final checkpoint, as a markdown table."""
    import torch

    history = torch.load(checkpoint, map_location="cpu", weights_only=False)["history"]
    names = ["loss", "c", "c2s", "s2c", "u", "contrast", "anchor_classes", "seconds"]
    names = [n for n in names if n in history[0]]
    print("\nCSRM per epoch (anchor_classes: classes holding contrast anchors per step, mean)\n")
    print("| epoch | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for record in history:
        print(f"| {record['epoch']} | " + " | ".join(f"{record[n]:.4f}" if n != "seconds" else f"{record[n]:.0f}"
                                                    for n in names) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    timing = commands.add_parser("time", help="seconds per epoch, CSRM vs CAM")
    timing.add_argument("--n", type=int, default=256, help="synthetic scenes")
    timing.add_argument("--size", type=int, default=512, help="scene side = crop size")
    timing.add_argument("--backbone", default="resnet50_v1c")
    timing.add_argument("--output-stride", type=int, default=16)
    timing.add_argument("--batch", type=int, default=32)
    timing.add_argument("--epochs", type=int, default=2, help="the first is the warm-up")
    timing.add_argument("--workers", type=int, default=4, help="data loader workers")
    timing.add_argument("--device", default="auto")
    timing.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="csrm parameter")
    compare = commands.add_parser("compare", help="CSRM vs CAM labels, same backbone, images and epochs")
    compare.add_argument("--n", type=int, default=200)
    compare.add_argument("--size", type=int, default=128)
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument("--cam-epochs", type=int, default=20, help="E1: CAM epochs before CSRM")
    compare.add_argument("--csrm-epochs", type=int, default=5, help="E2: CSRM epochs, or more CAM epochs")
    compare.add_argument("--work", help="folder for scenes and label sets (default: a new temp folder)")
    compare.add_argument("--data", help="a CSV index to use instead of synthetic scenes (read in place)")
    compare.add_argument("--limit", type=int, default=0, help="with --data: this many evenly spaced images")
    compare.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="csrm parameter")
    compare.add_argument("--cam-set", action="append", default=[], metavar="KEY=VALUE", help="cam parameter")
    args = parser.parse_args()
    run_time(args) if args.command == "time" else run_compare(args)


if __name__ == "__main__":
    main()
