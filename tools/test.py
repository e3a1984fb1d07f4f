"""Test a segmenter on ground truth (mmseg's tools/test.py, plus plabel's data options).

    python tools/test.py CONFIG CHECKPOINT --data D_TEST [--work-dir W]
        [--cfg-options k=v ...] [--launcher pytorch]

Prints mIoU, fwIoU, pixel accuracy and per-class IoU (percent), as the log does.
"""
import argparse
import os

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
    api.add_launch_arguments(parser)
    return api.parse_launch_args(parser)


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
        text = api.metrics_json(metrics)
        print(text)
        if args.out:
            with open(args.out, 'w') as handle:
                handle.write(text)


if __name__ == '__main__':
    main()
