"""Train a segmenter (mmseg's tools/train.py, plus plabel's data options).

    python tools/train.py CONFIG --data D [--labels LS] [--manual D_MANUAL] --work-dir W
        [--resume] [--amp] [--cfg-options k=v ...] [--launcher pytorch]

Multi-GPU / multi-node: tools/dist_train.sh CONFIG GPUS ... (torchrun). The work dir holds
the checkpoints, ``last_checkpoint`` (what --resume continues from) and the logs.
"""
from plabel_mmseg import api


def parse_args():
    parser = api.tool_parser('Train a segmentor on plabel data', 'train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    api.add_data_arguments(parser, 'training images: CSV index or VOC root')
    parser.add_argument('--labels', help='label set for --data (default: its masks)')
    parser.add_argument('--manual', help='manually labelled dataset mixed in (its masks)')
    parser.add_argument('--manual-split', help='split of a VOC root given as --manual')
    parser.add_argument('--val', help='validate on this dataset\'s masks')
    parser.add_argument('--val-split', help='split of a VOC root given as --val')
    parser.add_argument('--iters', type=int, help='iterations (the LR schedule follows)')
    parser.add_argument('--pretrained', help='local checkpoint for the encoder')
    parser.add_argument(
        '--resume',
        action='store_true',
        default=False,
        help='resume from the latest checkpoint in the work_dir automatically')
    parser.add_argument(
        '--amp',
        action='store_true',
        default=False,
        help='enable automatic-mixed-precision training')
    return api.parse_tool_args(parser)


def main():
    args = parse_args()
    # every option but CONFIG is a keyword of api.train (--work-dir: work)
    api.train(args.config, **api.tool_options(args, 'config'))


if __name__ == '__main__':
    main()
