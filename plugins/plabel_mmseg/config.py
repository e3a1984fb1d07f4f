"""Filling an mmengine segmenter config from plabel's options (data, label sets, work dir).

The configs under ``configs/segmenters/`` leave ``data`` / ``labels`` / ``manual`` of their
``PlabelSegDataset`` entries unset; these functions set them, the class count that follows
from the data, the schedule length and a local pretrained checkpoint, and adapt a GPU
recipe to the CPU (gloo, plain BatchNorm). They only edit the Config they are given.
"""
from __future__ import annotations

from pathlib import Path

from plabel_kit import DataError
from plabel_kit.datasets import VOC_CLASSES, read_classes

DATASET_TYPE = "PlabelSegDataset"


def load(config):
    """mmengine Config from a file (its ``custom_imports`` run)."""
    from mmengine.config import Config

    path = Path(config)
    if not path.is_file():
        raise DataError("config file not found", path=path)
    return Config.fromfile(str(path))


def parse_cfg_options(pairs) -> dict:
    """``["a.b=1", "c=[1,2]"]`` -> dict, with mmengine's DictAction value parsing."""
    from mmengine.config import DictAction

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DataError(f"expected KEY=VALUE in --cfg-options, got {pair!r}")
        options[key] = DictAction._parse_iterable(value)
    return options


def dataset_classes(data) -> list[str]:
    """Class names of a CSV index (its classes.json) or a VOC root, without reading images."""
    data = Path(data)
    if data.is_dir():
        return list(VOC_CLASSES)
    return read_classes(data.parent / "classes.json")[0]


def _plabel_dataset(cfg, loader: str) -> dict:
    dataset = cfg[loader]["dataset"]
    if dataset.get("type") != DATASET_TYPE:
        raise DataError(f"{loader}.dataset is {dataset.get('type')!r}; plabel's data options "
                        f"need type={DATASET_TYPE!r} there", path=cfg.filename)
    return dataset


def set_train_data(cfg, data, labels=None, manual=None, split=None):
    """Train on ``data`` with the label set ``labels`` (None: its masks) plus ``manual``."""
    _plabel_dataset(cfg, "train_dataloader").update(
        data=str(data), split=split, labels=str(labels) if labels else None,
        manual=str(manual) if manual else None)
    set_num_classes(cfg, len(dataset_classes(data)))


def set_eval_data(cfg, stage: str, data, split=None):
    """Score ``stage`` ("val" or "test") on the ground-truth masks of ``data``."""
    _plabel_dataset(cfg, f"{stage}_dataloader").update(data=str(data), split=split, labels=None,
                                                       manual=None)
    set_num_classes(cfg, len(dataset_classes(data)))


def drop_validation(cfg):
    """No validation during training (mmengine wants all three keys or none)."""
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None


def set_num_classes(cfg, num_classes: int):
    for head in ("decode_head", "auxiliary_head"):
        heads = cfg.model.get(head)
        for entry in heads if isinstance(heads, list) else [heads] if heads else []:
            entry["num_classes"] = num_classes


def set_iters(cfg, iters: int):
    """Train for ``iters`` iterations; schedulers that ended with the old schedule follow."""
    old = cfg.train_cfg["max_iters"]
    cfg.train_cfg["max_iters"] = iters
    schedulers = cfg.get("param_scheduler") or []
    for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
        if scheduler.get("end") == old:
            scheduler["end"] = iters


def set_pretrained(cfg, checkpoint):
    """Initialise the encoder from a local checkpoint (nothing is downloaded)."""
    if not Path(checkpoint).is_file():
        raise DataError("pretrained checkpoint not found", path=checkpoint)
    cfg.model["pretrained"] = None
    cfg.model.backbone["init_cfg"] = dict(type="Pretrained", checkpoint=str(checkpoint))


def adapt_to_device(cfg, launcher: str, cuda: bool):
    """On CPU: gloo, no DDP device ids, BatchNorm for SyncBN (it needs CUDA)."""
    if cuda:
        return
    cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})["backend"] = "gloo"
    if launcher != "none":
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None,
                                     broadcast_buffers=False,
                                     find_unused_parameters=cfg.get("find_unused_parameters", False))
        _replace_sync_bn(cfg.model)


def _replace_sync_bn(node):
    if isinstance(node, dict):
        if node.get("type") == "SyncBN":
            node["type"] = "BN"
        for value in node.values():
            _replace_sync_bn(value)
    elif isinstance(node, list):
        for value in node:
            _replace_sync_bn(value)

