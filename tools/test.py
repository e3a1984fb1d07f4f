"""Test a segmenter on ground truth (mmseg's tools/test.py, plus plabel's data options).

    python tools/test.py CONFIG CHECKPOINT --data D_TEST [--work-dir W]
        [--cfg-options k=v ...] [--launcher pytorch]

Prints mIoU, fwIoU, pixel accuracy and per-class IoU (percent), as the log does.
"""
import os

from plabel_mmseg import api


def parse_args():
    parser = api.tool_parser('Test a segmentor on plabel data', 'test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    api.add_data_arguments(parser, 'test images with masks: CSV index or VOC root')
    parser.add_argument(
        '--work-dir', help='the dir to save logs (default: the checkpoint\'s)')
    parser.add_argument('--out', help='write the scores to this JSON file')
    return api.parse_tool_args(parser)


def main():
    args = parse_args()
    # every option but CONFIG, CHECKPOINT and --out is a keyword of api.test (--work-dir: work)
    metrics = api.test(args.config, args.checkpoint,
                       **api.tool_options(args, 'config', 'checkpoint', 'out'))
    if int(os.environ.get('RANK', 0)) == 0:
        text = api.metrics_json(metrics)
        print(text)
        if args.out:
            with open(args.out, 'w') as handle:
                handle.write(text)


if __name__ == '__main__':
    main()
