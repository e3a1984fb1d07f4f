"""Ablation of the ISLE pipeline (seed 001) against the reference code: one table, every
component and ISLE, with the rows that undo one fidelity fix each.

    plabel run configs/pipelines/voc_isle_small.py --data D --work W --to isle \\
        --set labelled=L --set val_data=V
    python tools/ablate_isle.py --work W --data D --labelled L --heldout H [--before WB]

``--work``: a finished run of `configs/pipelines/voc_isle.py` (or `_small`) up to its
``isle`` stage; ``--before``: the same pipeline run by an earlier plabel-kit, for a column of
its own. ``--heldout``: the images (with masks) the table scores, normally the ones outside
``--labelled`` (ISLE's selection subset). Rows added from the run's own stages, each undoing
one change:

- *CAM + CRF, input's 255 band re-imposed*: the `crf` stage with ``keep_ignore=true``, as
  the CRF did after ``from_scores`` before (the band of the IR labels comes back), and ISLE
  over it;
- *ISLE on the raw walk and IRNet*: ISLE without the dense CRF after the AffinityNet walk
  and IRNet (seed 001 refines its components with the CRF);
- *ISLE, per-image selection*: ``selection=image`` (per-image IoU) instead of the paper's dataset-level
  class IoU;
- *AffinityNet on IRN's labels* (``--affinity-labels``: trains a second AffinityNet):
  the walk with ``affinity_labels=irn`` instead of PSA's two-alpha CRF labels, and ISLE over it.

CSRM: the table lists the run's CAM and CSRM (and the earlier run's, with ``--before``) and
CSRM's pixel-contrast loss per epoch from its manifest. Results go to ``<out>/results.json``;
re-running with the same ``--out`` reuses what is finished.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

COMPONENTS = [("CAM", "cam"), ("CAM + CRF", "crf"), ("AffinityNet walk", "randomwalk"),
              ("AffinityNet walk + CRF", "randomwalk_crf"), ("IRNet", "irnet"), ("IRNet + CRF", "irnet_crf"),
              ("CSRM", "csrm"), ("ISLE", "isle")]


def _producer(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())["producer"]


def _score(heldout, path: Path) -> float | None:
    from plabel_kit import LabelSet
    from plabel_kit.evaluation import evaluate

    if not (path / "manifest.json").exists():
        return None
    return 100 * evaluate(heldout, LabelSet(path), progress=False)["miou"]


def _refine(dataset, source: Path, out: Path, spec: dict) -> Path:
    """``spec`` (type and parameters) run over the label set ``source`` into ``out``."""
    from plabel_kit import LabelSet
    from plabel_kit.plugins import get_registry
    from plabel_kit.stages import run_refiner

    if not (out / "manifest.json").exists():
        run_refiner(get_registry().build("refiner", spec), dataset, LabelSet(source), out, progress=True)
    return out


def _isle(dataset, labelled, inputs: list[Path], out: Path, **params) -> Path:
    from plabel_kit import LabelSet
    from plabel_kit.plugins import get_registry
    from plabel_kit.stages import run_combiner

    if not (out / "manifest.json").exists():
        combiner = get_registry().build("combiner", {"type": "isle", **params})
        run_combiner(combiner, dataset, [LabelSet(p) for p in inputs], out, labelled=labelled, progress=False)
    return out


def _same_stage(work: Path, name: str) -> dict:
    """The stage's component spec (type and configuration) from its manifest."""
    producer = _producer(work / name)
    return {"type": producer["type"], **producer["config"]}


def ablations(args, dataset, labelled, work: Path, out: Path) -> list[tuple[str, Path]]:
    rows = []
    crf = {**_same_stage(work, "crf"), "keep_ignore": True}
    banded = _refine(dataset, work / "cam", out / "crf_keep_ignore", crf)
    rows.append(("CAM + CRF, input's 255 band re-imposed (before point 1)", banded))
    isle = _producer(work / "isle")["config"]
    inputs = [work / n for n in ("crf", "randomwalk_crf", "irnet_crf", "csrm")]
    rows.append(("ISLE with that CRF (before point 1)",
                 _isle(dataset, labelled, [banded] + inputs[1:], out / "isle_banded_crf", **isle)))
    rows.append(("ISLE on the raw walk and IRNet (before point 5)",
                 _isle(dataset, labelled, [work / n for n in ("crf", "randomwalk", "irnet", "csrm")],
                       out / "isle_raw", **isle)))
    rows.append(("ISLE, per-image selection (before point 5)",
                 _isle(dataset, labelled, inputs, out / "isle_per_image", **{**isle, "selection": "image"})))
    if args.affinity_labels:
        walk = {**_same_stage(work, "randomwalk"), "affinity_labels": "irn"}
        walked = _refine(dataset, work / "cam", out / "randomwalk_irn_labels", walk)
        rows.append(("AffinityNet walk, trained on IRN's labels (before point 6)", walked))
        refined = _refine(dataset, walked, out / "randomwalk_irn_labels_crf", _same_stage(work, "randomwalk_crf"))
        rows.append(("AffinityNet walk on IRN's labels + CRF (before point 6)", refined))
        rows.append(("ISLE with that walk (before point 6)",
                     _isle(dataset, labelled, [work / "crf", refined, work / "irnet_crf", work / "csrm"],
                           out / "isle_irn_labels", **isle)))
    return rows


def _contrast(work: Path) -> str:
    path = work / "csrm" / "manifest.json"
    if not path.exists():
        return "-"
    summary = json.loads(path.read_text()).get("summary") or {}
    values = summary.get("contrast_per_epoch") or [h["contrast"] for h in summary.get("history", ()) if "contrast" in h]
    return ", ".join(f"{v:.2f}" for v in values) if values else "not recorded"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="a voc_isle(_small).py run, finished up to `isle`")
    parser.add_argument("--data", required=True, help="the pipeline's --data")
    parser.add_argument("--labelled", required=True, help="ISLE's selection subset (the pipeline's `labelled`)")
    parser.add_argument("--heldout", required=True, help="CSV index of the images the table scores")
    parser.add_argument("--before", help="the same pipeline run by an earlier version: a column of its own")
    parser.add_argument("--out", help="where the ablation rows go (default: <work>/ablation)")
    parser.add_argument("--affinity-labels", action="store_true",
                        help="also train AffinityNet on IRN's labels (point 6; minutes)")
    args = parser.parse_args()
    os.environ.setdefault("PLABEL_QUIET", "1")
    from plabel_kit import open_dataset

    work = Path(args.work)
    out = Path(args.out or work / "ablation")
    dataset, labelled, heldout = open_dataset(args.data), open_dataset(args.labelled), open_dataset(args.heldout)
    runs = {"after": work} | ({"before": Path(args.before)} if args.before else {})
    table = {name: {key: _score(heldout, path / stage) for key, path in runs.items()} for name, stage in COMPONENTS}
    for name, path in ablations(args, dataset, labelled, work, out):
        table[name] = {"after": _score(heldout, path)}
    print(f"## ISLE pipeline ablation: {work} ({platform.machine()}, {os.cpu_count()} cores)\n")
    print(f"mIoU (%) on {len(heldout)} held-out images; ISLE selects on {len(labelled)} labelled images.\n")
    columns = list(runs)
    print("| labels | " + " | ".join(f"{c} ({runs[c]})" for c in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, values in table.items():
        cells = [values.get(c) for c in columns]
        print(f"| {name} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in cells) + " |")
    print("\nCSRM pixel-contrast loss per epoch: "
          + "; ".join(f"{c}: {_contrast(runs[c])}" for c in columns))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"runs": {k: str(v) for k, v in runs.items()}, "table": table},
                                                 indent=2))


if __name__ == "__main__":
    main()
