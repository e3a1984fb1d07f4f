"""Training and testing segmenters with mmengine's Runner; ``plabel segment`` and
``tools/train.py`` / ``tools/test.py`` both call these."""
from __future__ import annotations

import importlib
import os
from pathlib import Path

from plabel_kit import DataError
from plabel_kit.toolkit.runtime import shard

from . import config as C
from .checkpoints import read_mmengine_checkpoints

LAUNCHERS = ("none", "pytorch", "slurm", "mpi")


def add_launch_arguments(parser) -> None:
    """``--cfg-options``, ``--launcher`` and ``--local-rank`` as mmseg's tools/train.py and
    tools/test.py take them (argparse)."""
    from mmengine.config import DictAction

    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override some settings in the used config, the key-value pair '
                        'in xxx=yyy format will be merged into config file.')
    parser.add_argument('--launcher', choices=list(LAUNCHERS), default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK instead
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_launch_args(parser):
    """``parser.parse_args()``, with LOCAL_RANK set from --local-rank when no launcher set it."""
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def tool_parser(description: str, config_help: str):
    """The argparse parser of tools/train.py and tools/test.py, with their CONFIG argument;
    they add their options and parse with ``parse_tool_args``."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('config', help=config_help)
    return parser


def add_data_arguments(parser, data_help: str) -> None:
    """``--data`` and ``--split``, as tools/train.py and tools/test.py take them."""
    parser.add_argument('--data', help=data_help)
    parser.add_argument('--split', help='split of a VOC root (default train)')


def parse_tool_args(parser):
    """``add_launch_arguments`` then ``parse_launch_args``: the tools' command line."""
    add_launch_arguments(parser)
    return parse_launch_args(parser)


def tool_options(args, *skip: str) -> dict:
    """``train`` / ``test`` keyword arguments from a tool's parsed command line: every option
    under its own name, ``--work-dir`` as ``work``, without ``skip`` and ``--local-rank``."""
    options = {k: v for k, v in vars(args).items() if k not in (*skip, 'work_dir', 'local_rank')}
    return dict(options, work=args.work_dir)


def metrics_json(metrics: dict) -> str:
    """``test``'s scores as JSON; a class absent from ground truth and prediction has no IoU: null."""
    import json

    return json.dumps({k: None if v != v else v for k, v in metrics.items()}, indent=2)


def default_launcher() -> str:
    """'pytorch' inside a multi-process torchrun, else 'none'."""
    return "pytorch" if shard()[1] > 1 else "none"


def import_mmseg_modules():
    """Import every plugin's ``mmseg_custom_imports`` so their mmseg registrations run."""
    from plabel_kit import get_plugins

    for name in get_plugins().mmseg_custom_imports():
        importlib.import_module(name)


def _join_process_group(launcher: str):
    """mmengine's pytorch launcher calls torch.cuda.set_device, which a CPU-only torch
    lacks; on CPU join torchrun's group with gloo here and mmengine uses that group."""
    import torch
    import torch.distributed as dist

    if launcher == "pytorch" and not torch.cuda.is_available() and not dist.is_initialized():
        dist.init_process_group("gloo")


def _runner(cfg, launcher: str | None):
    import torch
    from mmengine.runner import Runner

    launcher = launcher or default_launcher()
    if launcher not in LAUNCHERS:
        raise DataError(f"launcher must be one of {', '.join(LAUNCHERS)}, not {launcher!r}")
    cfg.launcher = launcher
    C.adapt_to_device(cfg, launcher, torch.cuda.is_available())
    import_mmseg_modules()
    read_mmengine_checkpoints()
    _join_process_group(launcher)
    return Runner.from_cfg(cfg)


def _work_dir(cfg, config, work) -> str:
    if work is not None:
        return str(work)
    return cfg.get("work_dir") or str(Path("work_dirs") / Path(config).stem)


def _without_data(cfg, stage: str) -> bool:
    loader = cfg.get(f"{stage}_dataloader")
    return bool(loader) and loader["dataset"].get("type") == C.DATASET_TYPE and \
        loader["dataset"].get("data") is None


def train(config, *, data=None, labels=None, manual=None, split=None, manual_split=None,
          val=None, val_split=None, work=None, iters: int | None = None, pretrained=None,
          resume: bool = False, amp: bool = False, cfg_options: dict | None = None,
          launcher: str | None = None) -> Path:
    """Train the segmenter of ``config`` on ``data`` with label set ``labels`` (None: its
    ground-truth masks) plus the manually labelled dataset ``manual``; returns the work dir
    (checkpoints, ``last_checkpoint``, logs and ``vis_data/scalars.json`` with the losses).

    ``resume`` continues from the work dir's last checkpoint (mmengine's ``last_checkpoint``).
    ``val`` scores a dataset's ground truth every ``train_cfg.val_interval`` iterations."""
    cfg = C.load(config)
    if data is not None:
        C.set_train_data(cfg, data, labels, manual, split)
        if manual_split is not None:
            cfg.train_dataloader["dataset"]["manual_split"] = manual_split
    elif labels is not None or manual is not None:
        raise DataError("--labels and --manual need --data")
    if val is not None:
        C.set_eval_data(cfg, "val", val, val_split)
    elif _without_data(cfg, "val"):
        C.drop_validation(cfg)
    if iters is not None:
        C.set_iters(cfg, iters)
    if pretrained is not None:
        C.set_pretrained(cfg, pretrained)
    if amp and cfg.optim_wrapper.get("type") != "AmpOptimWrapper":
        cfg.optim_wrapper["type"] = "AmpOptimWrapper"
        cfg.optim_wrapper["loss_scale"] = "dynamic"
    cfg.work_dir = _work_dir(cfg, config, work)
    cfg.resume = resume
    cfg.merge_from_dict(cfg_options or {})  # explicit overrides win
    _runner(cfg, launcher).train()
    return Path(cfg.work_dir)


def test(config, checkpoint=None, *, data=None, split=None, work=None,
         cfg_options: dict | None = None, launcher: str | None = None) -> dict:
    """Score ``checkpoint`` on the ground truth of ``data``: ``mIoU``, ``fwIoU``, ``aAcc``
    and ``IoU.<class>`` in percent. Without a checkpoint the freshly initialised model is
    scored (the floor a trained one must clear). Logs go to ``work`` (default: beside the
    checkpoint)."""
    cfg = C.load(config)
    if data is not None:
        C.set_eval_data(cfg, "test", data, split)
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise DataError("checkpoint not found", path=checkpoint)
        cfg.load_from = str(checkpoint)
    cfg.work_dir = str(work) if work is not None else (
        str(Path(checkpoint).parent) if checkpoint is not None else _work_dir(cfg, config, None))
    if _without_data(cfg, "val"):
        C.drop_validation(cfg)
    cfg.train_dataloader = cfg.train_cfg = cfg.optim_wrapper = cfg.param_scheduler = None
    cfg.merge_from_dict(cfg_options or {})
    return _runner(cfg, launcher).test()
