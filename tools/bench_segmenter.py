"""Segmenter training speed and memory: s/iter and peak GPU memory of one training step
(forward, backward, SGD update) at a given batch and crop, and inference images/s, for a
config under configs/segmenters/ and, in the same run, for mmseg's own config of the same
recipe (the reference), with the ratio; mmseg's published figures are printed beside.

    python tools/bench_segmenter.py                       # DeepLabV3+ R50-D8, 512x512, batch 4 and 8
    python tools/bench_segmenter.py --batch 8 --iters 50 --amp
    python tools/bench_segmenter.py --config configs/segmenters/unet-vgg16_tiny-cpu-64x64.py \\
        --reference none --crop 64 64 --batch 2 --iters 2 --device cpu   # smoke run

Synthetic data: random images and labels of the crop size (time and memory do not depend
on pixel values), random weights; data loading is not timed, so s/iter is comparable to
mmengine's logged ``time`` minus ``data_time``. Single process: SyncBN runs as BatchNorm,
as mmengine does outside DDP. Prints a markdown table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

DEFAULT_CONFIG = "configs/segmenters/deeplabv3plus_r50-d8_4xb4-20k_voc12aug-512x512.py"
REFERENCE_CONFIG = "mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb4-20k_voc12aug-512x512.py"
# mmseg model zoo (configs/deeplabv3plus/README.md and metafile.yaml, Pascal VOC 2012 + Aug):
# DeepLabV3+ R-50-D8 512x512 20k, 4x V100 at 4 images per GPU: training memory 7.6 GB per
# GPU, inference 21 fps, mIoU 75.93 (77.50 ms+flip). No training s/iter is published there.
PUBLISHED = {"memory_gb": 7.6, "batch_per_gpu": 4, "inference_fps": 21.0, "device": "V100",
             "miou": 75.93}
VOC_TEST_SIZE = (512, 683)  # a 375x500 VOC image after the test Resize(2048, 512)


def config_file(name: str) -> str:
    """A path, or ``package::relative/path.py`` inside an installed OpenMMLab package."""
    if "::" not in name:
        return name
    from pathlib import Path

    from mmengine.utils import get_installed_path

    package, relative = name.split("::", 1)
    return str(Path(get_installed_path(package)) / ".mim" / "configs" / relative)


def build(config: str, device: torch.device, amp: bool):
    from mmengine.config import Config
    from mmengine.model.utils import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from plabel_mmseg.api import import_mmseg_modules

    import_mmseg_modules()
    cfg = Config.fromfile(config_file(config))
    init_default_scope(cfg.get("default_scope", "mmseg"))
    cfg.model.pretrained = None  # random weights: nothing is downloaded
    cfg.model.backbone.init_cfg = None
    model = revert_sync_batchnorm(MODELS.build(cfg.model)).to(device)
    optim_cfg = dict(cfg.optim_wrapper)
    if amp:
        optim_cfg.update(type="AmpOptimWrapper", loss_scale="dynamic")
    return model, build_optim_wrapper(model, optim_cfg)


def synthetic_batch(batch: int, size, num_classes: int, generator: torch.Generator) -> dict:
    """mmseg's training input: uint8 images [3, H, W] and SegDataSamples with random labels."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    height, width = size
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator))
        sample = SegDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, height, width),
                                                         generator=generator))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_speed(model, optim_wrapper, batch: int, crop, iters: int, warmup: int,
                device: torch.device) -> tuple[float, float | None]:
    """(s/iter, peak memory in GiB or None on CPU) of ``iters`` steps after ``warmup``."""
    generator = torch.Generator().manual_seed(0)
    data = synthetic_batch(batch, crop, model.decode_head.num_classes, generator)
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        model.train_step(data, optim_wrapper)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        model.train_step(data, optim_wrapper)
    synchronize(device)
    seconds = (time.perf_counter() - start) / iters
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return seconds, memory


def inference_fps(model, size, iters: int, warmup: int, device: torch.device) -> float:
    generator = torch.Generator().manual_seed(1)
    data = synthetic_batch(1, size, model.decode_head.num_classes, generator)
    model.eval()
    with torch.no_grad():
        for _ in range(warmup):
            model.test_step(data)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(iters):
            model.test_step(data)
        synchronize(device)
    return iters / (time.perf_counter() - start)


def measure(config: str, args, device: torch.device) -> list[dict]:
    rows = []
    model, optim_wrapper = build(config, device, args.amp)
    for batch in args.batch:
        seconds, memory = train_speed(model, optim_wrapper, batch, args.crop, args.iters,
                                      args.warmup, device)
        rows.append({"config": config, "batch": batch, "s_per_iter": seconds, "memory_gb": memory,
                     "versus": "-"})
        if device.type == "cuda":
            torch.cuda.empty_cache()
    fps = inference_fps(model, args.test_size, args.iters, args.warmup, device)
    for row in rows:
        row["fps"] = fps
    del model, optim_wrapper
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--reference", default=REFERENCE_CONFIG,
                        help="mmseg's config of the same recipe, or 'none'")
    parser.add_argument("--batch", type=int, nargs="+", default=[4, 8], help="images per step")
    parser.add_argument("--crop", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--test-size", type=int, nargs=2, default=VOC_TEST_SIZE, metavar=("H", "W"))
    parser.add_argument("--iters", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--amp", action="store_true", help="mixed precision (AmpOptimWrapper)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = measure(args.config, args, device)
    if args.reference != "none":
        reference = {row["batch"]: row for row in measure(args.reference, args, device)}
        for row in rows:
            ref = reference[row["batch"]]
            row["versus"] = f"{row['s_per_iter'] / ref['s_per_iter']:.2f}x time" + (
                f", {row['memory_gb'] / ref['memory_gb']:.2f}x memory" if row["memory_gb"] else "")
            ref["versus"] = "reference"
        rows += list(reference.values())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(f"\nDevice: {name}; torch {torch.__version__}; crop {args.crop[0]}x{args.crop[1]}; "
          f"{'AMP' if args.amp else 'fp32'}; {args.iters} timed steps after {args.warmup}\n")
    print("| config | batch | s/iter | peak memory (GiB) | inference img/s "
          f"({args.test_size[0]}x{args.test_size[1]}) | vs reference |")
    print("|---|---:|---:|---:|---:|---|")
    for row in rows:
        memory = f"{row['memory_gb']:.2f}" if row["memory_gb"] is not None else "-"
        print(f"| {row['config']} | {row['batch']} | {row['s_per_iter']:.3f} | {memory} | "
              f"{row['fps']:.1f} | {row['versus']} |")
    print(f"\nmmseg published (deeplabv3plus_r50-d8_4xb4-20k_voc12aug-512x512, {PUBLISHED['device']}, "
          f"{PUBLISHED['batch_per_gpu']} images per GPU): {PUBLISHED['memory_gb']} GB training memory "
          f"per GPU, {PUBLISHED['inference_fps']:.0f} fps inference, mIoU {PUBLISHED['miou']}.")


if __name__ == "__main__":
    main()
