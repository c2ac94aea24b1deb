#!/usr/bin/env python3
"""Generate the synthetic segmentation dataset (featup_plugin.data.synthetic) in mmseg's layout.

    python3 tools/dataset_converters/generate_dataset.py --out data/featup_synth --num-train 200 --num-val 50 --size 128

Idempotent: an identical existing dataset is kept.
"""

import argparse
import sys

from featup_plugin.data.synthetic import DatasetMismatchError, generate_dataset


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default='data/featup_synth', help='dataset root (default: %(default)s)')
    p.add_argument('--num-train', type=int, default=200, help='training images (default: %(default)s)')
    p.add_argument('--num-val', type=int, default=50, help='validation images (default: %(default)s)')
    p.add_argument(
        '--size',
        type=int,
        nargs='+',
        default=[128],
        metavar='N',
        help='image size: one int (square) or H W (default: 128)',
    )
    p.add_argument('--seed', type=int, default=0, help='dataset seed (default: %(default)s)')
    p.add_argument('--overwrite', action='store_true', help='replace a dataset with other parameters')
    p.add_argument(
        '--no-extra-targets',
        action='store_true',
        help='write only images and label maps (no depth maps or image-level labels: the original layout)',
    )
    args = p.parse_args(argv)
    if len(args.size) not in (1, 2):
        p.error(f'--size takes one int or two (H W), got {len(args.size)}')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    size = args.size[0] if len(args.size) == 1 else tuple(args.size)
    try:
        info = generate_dataset(
            args.out,
            num_train=args.num_train,
            num_val=args.num_val,
            size=size,
            seed=args.seed,
            overwrite=args.overwrite,
            extra_targets=not args.no_extra_targets,
        )
    except (ValueError, DatasetMismatchError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    h, w = info['size']
    if info['created']:
        what = f'generated in {info["seconds"]:.1f} s'
    elif info.get('added_targets'):
        what = f'already present; depth maps and image-level labels added in {info["seconds"]:.1f} s'
    else:
        what = 'already present with these parameters, nothing written'
    print(
        f'{info["root"]}: {info["num_train"]} train + {info["num_val"]} val images of {h}x{w}, '
        f'seed {info["seed"]}, {len(info["classes"])} classes: {what}'
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
