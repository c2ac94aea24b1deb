#!/usr/bin/env python3
"""Feature pictures: a PNG grid of image | low-res features | bilinear | JBU | implicit, one row per image.

    python3 tools/analysis_tools/visualize_features.py IMAGE [IMAGE ...] --out grid.png
        [--featup dino16 [--pretrained] | --model vit_small_patch16_224 --model-kwargs depth=4] [--weights CKPT]
        [--jbu CKPT [--trust]] [--implicit FILE ... | --implicit-steps 300 --implicit-views 4] [--size 224]
        [--figure feats.png]

Every feature map is shown through ONE 3-component PCA -> RGB (``featup_plugin.viz.pca``, ``scale='fit'``), fitted
once on the low-resolution features of all the images and applied to every column, so colours compare across
columns and rows. ``--figure`` also writes FeatUp's three-panel figure of the first image (``viz.plot_feats``:
image | low-res | JBU, one PCA fitted on both; needs matplotlib).

* backbone: ``--featup NAME``: one of FeatUp's featurizers (``featup_plugin.hub``: vit, dino16, dinov2, clip,
  maskclip, resnet50) with ``--pretrained`` (timm's / torch.hub's download, and FeatUp's upsampler unless
  ``--jbu``) or ``--weights``; or a frozen timm ViT (``--model``, ``--model-kwargs``); ``--weights``: a timm state
  dict, or a checkpoint of ``tools/train.py configs/*/jbu_*`` (its ``backbone.model.*``); without them the
  backbone is random-init (no download).
* JBU: ``--jbu`` FeatUp's official checkpoint as published (``--trust`` if it holds pickled objects), a training
  checkpoint (``upsampler.*``), a bare ``JBUStack`` state dict (``tools/extract_upsampler.py``,
  ``tools/model_converters/convert_featup_checkpoint.py``) or a model checkpoint holding one stack;
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
    p.add_argument('--featup', default=None, help="one of FeatUp's featurizers (featup_plugin.hub.list_models())")
    p.add_argument('--model', default='vit_small_patch16_224')
    p.add_argument('--model-kwargs', nargs='*', default=[])
    p.add_argument('--weights', default=None)
    p.add_argument('--pretrained', action='store_true')
    p.add_argument('--jbu', default=None, help='JBU weights (FeatUp checkpoint, training checkpoint, JBUStack)')
    p.add_argument('--trust', action='store_true', help='read files holding pickled objects (trusted files only)')
    p.add_argument('--figure', default=None, help="also write FeatUp's image | low-res | JBU figure of image 1")
    p.add_argument('--implicit', nargs='*', default=None, help='fitted implicit models, one per image')
    p.add_argument('--implicit-steps', type=int, default=300)
    p.add_argument('--implicit-views', type=int, default=4)
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--cell', type=int, default=160, help='pixels per picture in the grid')
    p.add_argument('--seed', type=int, default=0)
    return p


def load_jbu(path, feat_dim, trust=False):
    """The JBU stack of a checkpoint (any format ``featup_plugin.hub.upsampler_from_checkpoint`` reads)."""
    from featup_plugin.hub import upsampler_from_checkpoint

    return upsampler_from_checkpoint(path, feat_dim, trust=trust)[0].eval()


def build_backbone(args):
    """``(featurizer, feat_dim, jbu)``: FeatUp's (``--featup``) or a timm ViT with its ChannelNorm."""
    from featup_plugin.featurizers import TimmFeaturizer
    from featup_plugin.upsamplers import JBUStack

    if args.featup:
        from featup_plugin import hub

        if args.model_kwargs:
            raise SystemExit("--model-kwargs applies to --model, not to --featup (FeatUp's featurizers are fixed)")
        m = hub.load(
            args.featup,
            pretrained=args.pretrained,
            upsampler_weights=args.jbu,
            backbone_weights=args.weights,
            trust=args.trust,
        )
        print(m.extra_repr())
        return m.model, m.dim, m.upsampler
    net = TimmFeaturizer(
        args.model, pretrained=args.pretrained, weights=args.weights, **parse_model_kwargs(args.model_kwargs)
    )
    jbu = load_jbu(args.jbu, net.feat_dim, args.trust) if args.jbu else JBUStack(net.feat_dim).eval()
    return net, net.feat_dim, jbu


def main(argv=None):
    args = build_parser().parse_args(argv)
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image, ImageDraw

    from featup_plugin.data.images import denormalize, load_image
    from featup_plugin.training.implicit import ImplicitFeatUp, fit_implicit
    from featup_plugin.viz import pca, plot_feats

    torch.manual_seed(args.seed)
    net, _, jbu = build_backbone(args)
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
        lows.append(lr)
    _, fitted = pca(lows)
    names = ['image'] + list(rows[0][1])
    cell, head = args.cell, 18
    canvas = Image.new('RGB', (cell * len(names), head + cell * len(rows)), 'white')
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(names):
        draw.text((j * cell + 4, 3), name, fill='black')
    for r, (rgb, cols) in enumerate(rows):
        pics = [rgb] + [p[0] for p in pca(list(cols.values()), fit_pca=fitted, scale='fit')[0]]
        for j, pic in enumerate(pics):
            arr = (pic.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            canvas.paste(Image.fromarray(arr).resize((cell, cell), Image.NEAREST), (j * cell, head + r * cell))
    canvas.save(args.out, optimize=True)
    print(f'wrote {args.out}: {len(rows)} image(s) x {names}')
    if args.figure:
        rgb, cols = rows[0]
        plot_feats(rgb, lows[0], cols['JBU'], figsize=(12, 4)).savefig(args.figure)
        print(f"wrote {args.figure}: image | low-res | JBU (FeatUp's plot_feats)")
    return 0


if __name__ == '__main__':
    sys.exit(main())
