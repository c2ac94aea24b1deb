#!/usr/bin/env python3
"""Feature pictures: a PNG grid of image | low-res features | bilinear | JBU | implicit, one row per image.

    python3 tools/analysis_tools/visualize_features.py IMAGE [IMAGE ...] --out grid.png
        [--model vit_small_patch16_224 --model-kwargs depth=4] [--weights CKPT]
        [--jbu CKPT] [--implicit FILE ... | --implicit-steps 300 --implicit-views 4] [--size 224]

Every feature map is shown through ONE 3-component PCA -> RGB, fitted once on the low-resolution features of all
the images and applied to every column, so colours compare across columns and rows.

* backbone: a frozen timm ViT (``--model``, ``--model-kwargs``); ``--weights``: a timm state dict, or a checkpoint of
  ``tools/train.py configs/*/jbu_*`` (its ``backbone.model.*``); without it the ViT is random-init (no download).
* JBU: ``--jbu`` a training checkpoint (``upsampler.*``), a bare ``JBUStack`` state dict (``tools/
  extract_upsampler.py``) or an official FeatUp checkpoint converted with
  ``tools/model_converters/convert_featup_checkpoint.py``;
  without it an untrained stack (its output is then mostly a smoothing of the bilinear map).
* implicit: ``--implicit`` files from ``tools/fit_implicit.py`` (one per image, same order), else fitted here
  (``--implicit-steps``, ``--implicit-views``, with ``tools/fit_implicit.py --preset cpu``'s view bank and
  fitting size; 0 steps leaves the column out).
"""

from __future__ import annotations

import argparse
import sys

import torch

from featup_plugin.featurizers import parse_model_kwargs


def build_parser():
    p = argparse.ArgumentParser(description='PCA pictures of low-res, bilinear, JBU and implicit features')
    p.add_argument('images', nargs='+')
    p.add_argument('--out', default='featup_features.png')
    p.add_argument('--model', default='vit_small_patch16_224')
    p.add_argument('--model-kwargs', nargs='*', default=[])
    p.add_argument('--weights', default=None)
    p.add_argument('--pretrained', action='store_true')
    p.add_argument('--jbu', default=None, help='JBU weights (training checkpoint or JBUStack state dict)')
    p.add_argument('--implicit', nargs='*', default=None, help='fitted implicit models, one per image')
    p.add_argument('--implicit-steps', type=int, default=300)
    p.add_argument('--implicit-views', type=int, default=4)
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--cell', type=int, default=160, help='pixels per picture in the grid')
    p.add_argument('--seed', type=int, default=0)
    return p


def load_jbu(path, feat_dim):
    from featup_plugin.checkpoint import find_upsampler_stacks, load_stacks, read_state_dict
    from featup_plugin.upsamplers import JBUStack

    sd = read_state_dict(path)
    stacks = find_upsampler_stacks(sd, where=path)
    stack_sd = next(iter(stacks.values())) if len(stacks) == 1 else {}
    stages = len({k.split('.')[0] for k in stack_sd if k.startswith('up')}) or 4
    stack = JBUStack(feat_dim, num_stages=stages)
    load_stacks({'0': stack}, sd, who='visualize_features', where=path)
    return stack.eval()


class PCA3:
    """A 3-component PCA fitted once; maps [C, H, W] features to RGB with one shared scaling."""

    def __init__(self, feats):
        x = torch.cat([f.permute(1, 2, 0).reshape(-1, f.shape[0]) for f in feats])
        self.mean = x.mean(0)
        _, _, vh = torch.linalg.svd(x - self.mean, full_matrices=False)
        self.comps = vh[:3].T
        z = (x - self.mean) @ self.comps
        self.lo, self.hi = z.quantile(0.01, dim=0), z.quantile(0.99, dim=0)

    def __call__(self, f):
        z = torch.einsum('chw,ck->khw', f - self.mean.view(-1, 1, 1), self.comps)
        return ((z - self.lo.view(3, 1, 1)) / (self.hi - self.lo).clamp_min(1e-8).view(3, 1, 1)).clamp(0, 1)


def main(argv=None):
    args = build_parser().parse_args(argv)
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image, ImageDraw

    from featup_plugin.data.images import denormalize, load_image
    from featup_plugin.featurizers import TimmFeaturizer
    from featup_plugin.training.implicit import ImplicitFeatUp, fit_implicit
    from featup_plugin.upsamplers import JBUStack

    torch.manual_seed(args.seed)
    net = TimmFeaturizer(
        args.model, pretrained=args.pretrained, weights=args.weights, **parse_model_kwargs(args.model_kwargs)
    )
    jbu = load_jbu(args.jbu, net.feat_dim) if args.jbu else JBUStack(net.feat_dim).eval()
    if args.implicit is not None and len(args.implicit) not in (0, len(args.images)):
        raise SystemExit(f'--implicit needs one file per image ({len(args.images)}), got {len(args.implicit)}')
    rows, lows = [], []
    for i, path in enumerate(args.images):
        img = load_image(path, args.size)[None]
        with torch.no_grad():
            lr = net(img)
            cols = {
                'low-res': F.interpolate(lr, img.shape[-2:], mode='nearest'),
                'bilinear': F.interpolate(lr, img.shape[-2:], mode='bilinear', align_corners=False),
                'JBU': jbu(lr, img, output_size=img.shape[-2:]),
            }
        if args.implicit:
            cols['implicit'] = ImplicitFeatUp.load(args.implicit[i]).features(img.shape[-2:])
        elif args.implicit_steps > 0:
            # fit_implicit.py's CPU preset: views from the PCA bank, rendered at up to 112 px while fitting
            model, _ = fit_implicit(
                img,
                net,
                steps=args.implicit_steps,
                views=args.implicit_views,
                view_bank=True,
                fit_size=min(112, args.size),
                seed=args.seed,
            )
            cols['implicit'] = model.features(img.shape[-2:])
        rows.append((denormalize(img[0]), cols))
        lows.append(lr[0])
    pca = PCA3(lows)
    names = ['image'] + list(rows[0][1])
    cell, head = args.cell, 18
    canvas = Image.new('RGB', (cell * len(names), head + cell * len(rows)), 'white')
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(names):
        draw.text((j * cell + 4, 3), name, fill='black')
    for r, (rgb, cols) in enumerate(rows):
        pics = [rgb] + [pca(f[0]) for f in cols.values()]
        for j, pic in enumerate(pics):
            arr = (pic.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            canvas.paste(Image.fromarray(arr).resize((cell, cell), Image.NEAREST), (j * cell, head + r * cell))
    canvas.save(args.out, optimize=True)
    print(f'wrote {args.out}: {len(rows)} image(s) x {names}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
