"""Test a segmenter on ground truth (mmseg's tools/test.py, plus plabel's data options).

    python tools/test.py CONFIG CHECKPOINT --data D_TEST [--work-dir W]
        [--cfg-options k=v ...] [--launcher pytorch]

Prints mIoU, fwIoU, pixel accuracy and per-class IoU (percent), as the log does.
"""
import argparse
import json
import os

from mmengine.config import DictAction

from plabel_mmseg import api


def parse_args():
    parser = argparse.ArgumentParser(description='Test a segmentor on plabel data')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--data', help='test images with masks: CSV index or VOC root')
    parser.add_argument('--split', help='split of a VOC root (default train)')
    parser.add_argument(
        '--work-dir', help='the dir to save logs (default: the checkpoint\'s)')
    parser.add_argument('--out', help='write the scores to this JSON file')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override some settings in the used config, the key-value pair '
        'in xxx=yyy format will be merged into config file.')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main():
    args = parse_args()
    metrics = api.test(
        args.config,
        args.checkpoint,
        data=args.data,
        split=args.split,
        work=args.work_dir,
        cfg_options=args.cfg_options,
        launcher=args.launcher)
    if int(os.environ.get('RANK', 0)) == 0:
        # a class absent from ground truth and prediction has no IoU: null
        text = json.dumps({k: None if v != v else v for k, v in metrics.items()}, indent=2)
        print(text)
        if args.out:
            with open(args.out, 'w') as handle:
                handle.write(text)


if __name__ == '__main__':
    main()
