"""CAM inference throughput: images/s at one scale vs IRN's 4 scales x flip, per device.

    python tools/bench_cam.py --backbone resnet50_v1c --size 375 500 --n 8

Random weights (throughput does not depend on them) and random images of the given size.
Prints a markdown table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch


def bench(model, images, class_ids, scales, flip, output_stride, device) -> float:
    from plabel_kit.toolkit.inference import multiscale_cam, normalise

    tensors = [normalise(im).to(device) for im in images]
    multiscale_cam(model, tensors[0], class_ids, scales, flip, output_stride)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for tensor in tensors:
        multiscale_cam(model, tensor, class_ids, scales, flip, output_stride)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(tensors) / (time.perf_counter() - start)


def main():
    from plabel_kit.toolkit.cam import CamNet

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50_v1c")
    parser.add_argument("--output-stride", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    parser.add_argument("--n", type=int, default=8, help="images per measurement")
    parser.add_argument("--classes", type=int, default=2, help="tagged classes per image")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (*args.size, 3), dtype=np.uint8) for _ in range(args.n)]
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print("| device | backbone | image | 1 scale (img/s) | 4 scales x flip (img/s) | ratio |")
    print("|---|---|---|---|---|---|")
    for device in devices:
        model = CamNet(args.backbone, 20, args.output_stride).to(device).eval()
        single = bench(model, images, list(range(args.classes)), (1.0,), False, args.output_stride, device)
        multi = bench(model, images, list(range(args.classes)), (1.0, 0.5, 1.5, 2.0), True,
                      args.output_stride, device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
            f"CPU {platform.processor() or platform.machine()}, {args.threads} threads"
        print(f"| {name} | {args.backbone} OS{args.output_stride} | {args.size[0]}x{args.size[1]} | "
              f"{single:.2f} | {multi:.2f} | {single / multi:.1f}x |")


if __name__ == "__main__":
    main()
