"""Benchmark the refiners against the reference way, on the same images in one run.

- Dense CRF: pydensecrf called image by image in one process (IRN's ``crf_inference_label``
  loop) vs the ``crf`` refiner's process pool; label recipe on the VOC samples' masks
  (repeated to --n images). Outputs are checked to be identical.
- Random walk with IRN's settings (stride 4, radius 5, beta 10, 2^8 steps): IRN's dense
  transition matrix squared 8 times (torch, float32) vs the sparse walk, on a crop small
  enough for the dense one (--crop), then the sparse walk alone on full 375x500 images.
  Peak memory is measured in a forked child per run (peak RSS minus RSS before).
- Dense CRF with 21 labels (IRN's unary from the VOC masks as class ids, label recipe):
  pydensecrf on 1 core and on the process pool vs the torch backend on the CPU and, when
  one is present, the GPU (batches of --batch images; GPU memory per image = peak
  allocated over the batch / batch size). Agreement = pixels whose label equals pydensecrf's.

Usage: python tools/bench_refine.py --n 28 --workers 2
       python tools/bench_refine.py --parts torch --torch-n 64 --batch 32   (on a GPU machine)
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VOC_SAMPLES = REPO.parent / "shared" / "data" / "voc_samples"


def voc_images(n: int):
    """[(id, image uint8 [H, W, 3], mask uint8 [H, W])] of the VOC samples, repeated to n."""
    from plabel_kit.datasets import load_image, load_index_png

    ids = sorted(p.name[:-9] for p in VOC_SAMPLES.glob("*_0img.png"))
    if not ids:
        sys.exit(f"no VOC samples in {VOC_SAMPLES}")
    samples = [(i, load_image(VOC_SAMPLES / f"{i}_0img.png"), load_index_png(VOC_SAMPLES / f"{i}_5labels.png"))
               for i in ids]
    return [samples[k % len(samples)] for k in range(n)]


# ---- dense CRF ------------------------------------------------------------------------

def crf_direct(image, mask):
    """IRN's crf_inference_label, verbatim in its calls: class-id labels out."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels

    keys = np.unique(mask)
    height, width = mask.shape
    crf = dcrf.DenseCRF2D(width, height, len(keys))
    crf.setUnaryEnergy(unary_from_labels(np.searchsorted(keys, mask), len(keys), gt_prob=0.7, zero_unsure=False))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(np.copy(image)), compat=10)
    q = np.array(crf.inference(10)).reshape(len(keys), height, width)
    return keys[np.argmax(q, axis=0)].astype(np.uint8)


def cpu_seconds(who) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def bench_crf(images, workers: int) -> list[tuple]:
    """CPU time is reported beside wall time: on a machine other jobs keep busy, the pool's
    wall time says little, its CPU time still shows what it costs over the direct loop."""
    from plabel_crf.refiner import DenseCRF
    from plabel_kit import PseudoLabel, Sample
    from plabel_kit.progress import track

    start, cpu = time.perf_counter(), cpu_seconds(resource.RUSAGE_SELF)
    direct = [crf_direct(image, mask) for _, image, mask in track(images, "pydensecrf, image by image")]
    direct_s, direct_cpu = time.perf_counter() - start, cpu_seconds(resource.RUSAGE_SELF) - cpu

    samples = [Sample(f"{i}_{k}", tuple(int(c) for c in np.unique(m) if c), i, _image=image)
               for k, (i, image, m) in enumerate(images)]
    pseudos = [PseudoLabel(mask) for _, _, mask in images]
    refiner = DenseCRF(workers=workers, save_scores=False, backend="pydensecrf")  # the pool, also on GPU machines
    start = time.perf_counter()
    cpu = cpu_seconds(resource.RUSAGE_SELF) + cpu_seconds(resource.RUSAGE_CHILDREN)
    pooled = []
    for at in track(range(0, len(samples), refiner.batch_size), "crf refiner, pool"):
        pooled += refiner.refine_batch(samples[at:at + refiner.batch_size], pseudos[at:at + refiner.batch_size])
    pool_s = time.perf_counter() - start
    refiner.close()  # the workers' CPU time is counted once they have exited
    pool_cpu = cpu_seconds(resource.RUSAGE_SELF) + cpu_seconds(resource.RUSAGE_CHILDREN) - cpu
    same = all(np.array_equal(a, b.label) for a, b in zip(direct, pooled))
    n = len(images)
    return [("dense CRF, label recipe", "pydensecrf image by image", f"{n / direct_s:.2f} img/s",
             f"{direct_s:.1f} s ({direct_cpu:.1f} s CPU)", "-", "1.00"),
            ("", f"crf refiner, {refiner.worker_count()} workers", f"{n / pool_s:.2f} img/s",
             f"{pool_s:.1f} s ({pool_cpu:.1f} s CPU)", "-",
             f"{direct_s / pool_s:.2f}" + ("" if same else " (labels differ!)"))]


# ---- dense CRF, torch backend -----------------------------------------------------------

def crf_jobs(images, n_labels: int = 21):
    """CrfJobs with IRN's label unary over all n_labels classes (mask class ids as labels)."""
    from plabel_kit.toolkit.crf import ITERATIONS, RECIPES, label_unary
    from plabel_crf.refiner import CrfJob

    return [CrfJob(image, label_unary(mask, n_labels), np.arange(n_labels), RECIPES["label"], ITERATIONS)
            for _, image, mask in images]


def torch_timed(jobs, batch: int, device: str):
    """(seconds, marginals, peak bytes per image on CUDA or None) of the torch backend."""
    import torch

    from plabel_crf.torch_crf import dense_crf_batch
    from plabel_kit.progress import track

    def run(part):
        return dense_crf_batch([j.image for j in part], [j.unary for j in part], part[0].kernels,
                               part[0].iterations, device=device)

    per_image = None
    if device == "cuda":
        run(jobs[:batch])  # CUDA start-up and allocator warm-up, not timed
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = []
    for at in track(range(0, len(jobs), batch), f"torch crf, {device}"):
        out += run(jobs[at:at + batch])
    if device == "cuda":
        torch.cuda.synchronize()
        per_image = (torch.cuda.max_memory_allocated() - before) / min(batch, len(jobs))
    return time.perf_counter() - start, out, per_image


def bench_crf_torch(images, workers: int | None, batch: int, threads: int) -> list[tuple]:
    """pydensecrf on 1 core and the pool vs the torch backend on the same 21-label jobs."""
    from concurrent.futures import ProcessPoolExecutor

    import torch

    from plabel_crf.refiner import run_job
    from plabel_kit.toolkit.runtime import available_cores
    from plabel_kit.progress import track

    torch.set_num_threads(threads)
    jobs = crf_jobs(images)
    n = len(jobs)
    start = time.perf_counter()
    reference = [run_job(job) for job in track(jobs, "pydensecrf, 1 core, 21 labels")]
    single_s = time.perf_counter() - start
    workers = available_cores() if workers is None else workers
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
        list(pool.map(run_job, jobs))
    pool_s = time.perf_counter() - start

    def agreement(marginals) -> str:
        same = sum(int((a.argmax(0) == b.argmax(0)).sum()) for a, b in zip(reference, marginals))
        return f"agree {100 * same / sum(a[0].size for a in reference):.3f}%"

    label = f"dense CRF, 21 labels, torch backend (batch {batch})"
    rows = [(label, "pydensecrf, 1 core", f"{n / single_s:.2f} img/s", f"{single_s:.1f} s", "-", "1.00"),
            ("", f"pydensecrf, pool of {workers}", f"{n / pool_s:.2f} img/s", f"{pool_s:.1f} s", "-",
             f"{single_s / pool_s:.2f}")]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        seconds, marginals, per_image = torch_timed(jobs, batch, device)
        name = (f"torch, CPU, {torch.get_num_threads()} threads" if device == "cpu"
                else f"torch, {torch.cuda.get_device_name()}")
        memory = "-" if per_image is None else f"{per_image / 2 ** 20:.0f} MB/img (GPU)"
        rows.append(("", name, f"{n / seconds:.2f} img/s", f"{seconds:.1f} s", memory,
                     f"{single_s / seconds:.2f}  ({agreement(marginals)})"))
    if len(devices) == 1:
        rows.append(("", "torch, GPU: none present", "-", "-", "-", "-"))
    return rows


# ---- random walk ----------------------------------------------------------------------

def irn_inputs(image, mask, crop=None):
    """(cams float64 [K, h, w] at stride 4, boundary float64 [h, w]) from the mask: CAM-like
    blobs and its edges, as stand-ins for CAM and IRNet outputs."""
    import cv2

    from plabel_kit.toolkit.walk import max_pool_to_grid, pool_to_grid

    keys = [c for c in np.unique(mask) if 0 < c < 255]
    if crop:  # centred, where the objects usually are
        top, left = max(0, (mask.shape[0] - crop) // 2), max(0, (mask.shape[1] - crop) // 2)
        mask = mask[top:top + crop, left:left + crop]
    blobs = np.stack([cv2.GaussianBlur((mask == c).astype(np.float32), (0, 0), 8) for c in keys])
    edges = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    return pool_to_grid(blobs, 4), max_pool_to_grid(edges.astype(np.float64), 4)


def walk_sparse(cams, boundary):
    from plabel_kit.toolkit.affinity import boundary_affinity
    from plabel_kit.toolkit.walk import propagate, walk_operator

    operator = walk_operator(boundary_affinity(boundary, 5), 5, 10.0)
    return propagate(cams * (1 - boundary), operator, 256, "cpu")


def walk_dense(cams, boundary):
    """IRN's propagate_to_edge after its affinity: dense A, A^beta / column sums, 8 squarings."""
    import torch

    from plabel_kit.toolkit.affinity import boundary_affinity, neighbour_offsets

    affinity = boundary_affinity(boundary, 5)
    height, width = boundary.shape
    n = height * width
    dense = torch.eye(n)
    index = np.arange(n).reshape(height, width)
    for d, (dy, dx) in enumerate(neighbour_offsets(5)):
        rows, cols = slice(0, height - dy), slice(max(0, -dx), width - max(0, dx))
        src = torch.from_numpy(index[rows, cols].ravel())
        dst = src + dy * width + dx
        values = torch.from_numpy(affinity[d, rows, cols].ravel()).float()
        dense[src, dst] = values
        dense[dst, src] = values
    transition = dense.pow(10)
    transition = transition / transition.sum(dim=0, keepdim=True)
    for _ in range(8):
        transition = transition @ transition
    x = torch.from_numpy(cams * (1 - boundary)).float().reshape(len(cams), -1)
    return (x @ transition).reshape(cams.shape).numpy()


def _status_mb(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field)) / 1024


def _measured(queue, method, cams, boundary):
    # a forked child shares the parent's pages and inherits its ru_maxrss, so clear the
    # high-water mark (clear_refs 5) and read VmHWM, which then counts this walk only
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    before = _status_mb("VmRSS")
    start = time.perf_counter()
    result = {"sparse": walk_sparse, "dense": walk_dense}[method](cams, boundary)
    seconds = time.perf_counter() - start
    queue.put((seconds, _status_mb("VmHWM") - before, result))


def measure(method, cams, boundary):
    """(seconds, peak memory growth MB, result) of one walk in a forked child."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_measured, args=(queue, method, cams, boundary))
    child.start()
    out = queue.get()
    child.join()
    return out


def bench_walk(images, crop: int, threads: int) -> list[tuple]:
    import scipy.sparse  # noqa: F401 (imported before the forks, so not counted in their memory)
    import torch
    import torch.nn.functional  # noqa: F401

    from plabel_kit.progress import track

    torch.set_num_threads(threads)
    rows = []
    totals = {"dense": [0.0, 0.0], "sparse": [0.0, 0.0]}
    worst = 0.0
    distinct = {i: (image, mask) for i, image, mask in images}
    for image_id, (image, mask) in track(distinct.items(), "dense and sparse walks, crops"):
        cams, boundary = irn_inputs(image, mask, crop)
        seconds_d, mb_d, dense = measure("dense", cams, boundary)
        seconds_s, mb_s, sparse = measure("sparse", cams, boundary)
        # IRN divides by the global max before thresholding: compare what it thresholds
        worst = max(worst, float(np.abs(dense / max(dense.max(), 1e-12) - sparse / max(sparse.max(), 1e-12)).max()))
        totals["dense"][0] += seconds_d
        totals["dense"][1] = max(totals["dense"][1], mb_d)
        totals["sparse"][0] += seconds_s
        totals["sparse"][1] = max(totals["sparse"][1], mb_s)
    count = len(distinct)
    grid = irn_inputs(*next(iter(distinct.values())), crop)[1].shape
    label = f"random walk, IRN, {crop}x{crop} crop (grid {grid[0]}x{grid[1]})"
    rows.append((label, "dense (IRN), torch float32", f"{totals['dense'][0] / count:.2f} s/img", "-",
                 f"{totals['dense'][1]:.0f} MB", "1.00"))
    rows.append(("", "sparse walk", f"{totals['sparse'][0] / count:.3f} s/img", "-", f"{totals['sparse'][1]:.0f} MB",
                 f"{totals['dense'][0] / totals['sparse'][0]:.1f}  (max |diff| {worst:.1e})"))
    seconds, peak = 0.0, 0.0
    for image_id, (image, mask) in track(distinct.items(), "sparse walk, full images"):
        cams, boundary = irn_inputs(image, mask)
        s, mb, _ = measure("sparse", cams, boundary)
        seconds, peak = seconds + s, max(peak, mb)
    nodes = max(np.prod(irn_inputs(image, mask)[1].shape) for image, mask in distinct.values())
    rows.append(("random walk, IRN, full VOC images", "dense (IRN): not run", "-", "-",
                 f"{nodes * nodes * 4 / 2 ** 30:.2f} GB per matrix", "-"))
    rows.append(("", "sparse walk", f"{seconds / count:.3f} s/img", "-", f"{peak:.0f} MB", "-"))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=28, help="images for the CRF comparison (VOC samples, repeated)")
    parser.add_argument("--workers", type=int, default=None, help="crf refiner workers (default: all cores)")
    parser.add_argument("--crop", type=int, default=192, help="side of the crop the dense walk runs on")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the dense walk (the sparse walk runs on one)")
    parser.add_argument("--parts", default="crf,walk,torch",
                        help="comma-separated benchmarks to run: crf, walk, torch")
    parser.add_argument("--torch-n", type=int, default=7, help="images for the 21-label torch CRF comparison")
    parser.add_argument("--batch", type=int, default=16, help="images per torch CRF call")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch threads for the torch CRF on the CPU (1: against pydensecrf's 1 core)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    images = voc_images(args.n)
    load = os.getloadavg()[0]
    rows = []
    if "crf" in parts:
        rows += bench_crf(images, args.workers)
    if "walk" in parts:
        rows += bench_walk(images, args.crop, args.threads)
    if "torch" in parts:
        rows += bench_crf_torch(voc_images(args.torch_n), args.workers, args.batch, args.torch_threads)
    header = ("benchmark", "method", "speed", "total", "peak memory", "speed-up")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths)] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    torch_n = f" ({args.torch_n} for torch)" if "torch" in parts else ""
    print(f"{len(images)} images{torch_n}; load average {load:.1f} before, {os.getloadavg()[0]:.1f} after, "
          f"on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
