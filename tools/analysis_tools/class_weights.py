#!/usr/bin/env python3
"""Class weights for a class-balanced cross-entropy, from the pixel frequencies of a dataset's label maps.

    python3 tools/analysis_tools/class_weights.py data/featup_synth/ann_dir/train --num-classes 10
    python3 tools/analysis_tools/class_weights.py data/featup_synth/ann_dir/train --num-classes 10 --method median

With f_c the fraction of (non-ignored) training pixels of class c:
  median   (median-frequency balancing, Eigen & Fergus 2015): w_c = median(f) / f_c
  invsqrt  w_c = 1 / sqrt(f_c)
  inv      w_c = 1 / f_c
then rescaled so that the pixel-weighted mean sum_c f_c w_c is 1: the weighted loss keeps the scale of the
unweighted one (mmseg's CrossEntropyLoss averages the weighted per-pixel losses over all pixels), so the same
learning rate applies. Prints the frequencies and a ``class_weight=[...]`` line for mmseg's CrossEntropyLoss.
Reads PNG label maps (one class index per pixel; values >= num_classes, e.g. 255, are ignored).
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np

METHODS = ('median', 'invsqrt', 'inv')


def pixel_counts(ann_dir: str, num_classes: int, suffix: str = '.png') -> np.ndarray:
    from PIL import Image

    files = sorted(glob.glob(os.path.join(ann_dir, '*' + suffix)))
    if not files:
        raise FileNotFoundError(f'no *{suffix} label maps in {ann_dir}')
    counts = np.zeros(num_classes, np.int64)
    for f in files:
        lab = np.asarray(Image.open(f)).ravel()
        counts += np.bincount(lab[lab < num_classes], minlength=num_classes)
    return counts


def class_weights(counts, method: str = 'median') -> np.ndarray:
    """Weights from per-class pixel counts, normalised to a pixel-weighted mean of 1 (see the module doc).

    A class with no pixel gets weight 0 (it cannot contribute to the loss anyway)."""
    counts = np.asarray(counts, np.float64)
    if counts.ndim != 1 or counts.sum() <= 0 or (counts < 0).any():
        raise ValueError('counts must be a 1-D array of non-negative pixel counts with a positive sum')
    freq = counts / counts.sum()
    present = freq > 0
    w = np.zeros_like(freq)
    if method == 'median':
        w[present] = np.median(freq[present]) / freq[present]
    elif method == 'invsqrt':
        w[present] = 1 / np.sqrt(freq[present])
    elif method == 'inv':
        w[present] = 1 / freq[present]
    else:
        raise ValueError(f'method must be one of {METHODS}, got {method!r}')
    return w / (freq * w).sum()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('ann_dir', help='folder of label maps (e.g. data/featup_synth/ann_dir/train)')
    p.add_argument('--num-classes', type=int, required=True)
    p.add_argument('--method', choices=METHODS, default='median')
    p.add_argument('--suffix', default='.png')
    p.add_argument('--decimals', type=int, default=3)
    args = p.parse_args(argv)
    counts = pixel_counts(args.ann_dir, args.num_classes, args.suffix)
    freq = counts / counts.sum()
    w = class_weights(counts, args.method)
    for c in range(args.num_classes):
        print(f'class {c:3d}: pixels {counts[c]:10d}  frequency {freq[c]:.5f}  weight {w[c]:.{args.decimals}f}')
    print('class_weight=[' + ', '.join(f'{v:.{args.decimals}f}' for v in w) + ']')


if __name__ == '__main__':
    main()
