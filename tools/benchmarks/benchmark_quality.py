#!/usr/bin/env python3
"""Quality proxies for the upsamplers: bilinear vs JBU (trained by FeatUp's multi-view loss) vs implicit FeatUp.

    python3 tools/benchmarks/benchmark_quality.py [--task both|truth|views|implicit] [--steps 300] \
        [--implicit-steps 200] [--quick]

Two tasks on the project's generated images (held-out images never seen in training), CPU-sized:

* ``truth``: features with a KNOWN high-resolution truth. A fixed random conv net (3x3 conv 3->32, tanh, 3x3 conv
  32->16, seeded) computed at full resolution is the truth ``F``; the "backbone" only sees
  ``avg_pool(F, stride)`` (default: 8x8 tokens of a 64 px image). The JBU is trained by the multi-view loss from those
  low-res observations alone; reported: relative squared error ``|U(f) - F|^2 / |F - mean F|^2`` on held-out
  images, for bilinear, the untrained JBU, the trained JBU and implicit FeatUp.
* ``views``: FeatUp's own proxy with a (random-init, frozen) ViT: after training the JBU on training images,
  the reconstruction error of held-out images' jittered views, ``|pool(t(U(f(x)))) - f(t(x))|^2`` relative to
  the variance of ``f(t(x))``, with one fixed uniform pooling for every method (so the learned downsampler does
  not favour the JBU).

* ``implicit``: implicit FeatUp at 224 px against the truth field observed with stride 16: FeatUp's fitting
  (fresh backbone views each step, rendered at 224 px) vs the view bank vs the CPU preset of
  ``tools/fit_implicit.py`` (view bank, rendered at 112 px), equal steps and views: error and seconds per fit.
Prints a table and the command line; figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from featup_plugin.data.synthetic import generate_scene, scene_seed
from featup_plugin.training import UncertaintyHead, apply_jitter, clip_early_gradients, multiview_loss, sample_jitter
from featup_plugin.training.implicit import fit_implicit
from featup_plugin.upsamplers import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BlurDownsampler,
    JBUStack,
    build_downsampler,
    num_x2_stages,
)


def images(split, n, size, seed=0):
    out = []
    for i in range(n):
        rgb = torch.from_numpy(generate_scene(scene_seed(seed, split, i), (size, size))[0]).permute(2, 0, 1)
        rgb = rgb.float() / 255
        out.append((rgb - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1))
    return torch.stack(out)


class TruthField(nn.Module):
    """The known high-resolution features: a fixed random conv net at full resolution."""

    def __init__(self, dim=16, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(torch.randn(32, 3, 3, 3, generator=g) / 3, requires_grad=False)
        self.w2 = nn.Parameter(torch.randn(dim, 32, 3, 3, generator=g) / 8, requires_grad=False)

    def forward(self, x):
        return F.conv2d(torch.tanh(F.conv2d(x, self.w1, padding=1)), self.w2, padding=1)


class PooledTruth(nn.Module):
    def __init__(self, truth, stride):
        super().__init__()
        self.truth, self.stride = truth, stride

    def forward(self, x):
        return F.avg_pool2d(self.truth(x), self.stride)


class TinyViT(nn.Module):
    """A frozen random-init timm ViT (patch 8, 2 blocks, 64 dims) with ChannelNorm: the CPU config's backbone."""

    def __init__(self):
        super().__init__()
        from featup_plugin.featurizers import TimmFeaturizer

        torch.manual_seed(0)
        self.net = TimmFeaturizer('vit_small_patch8_224', depth=2, embed_dim=64, num_heads=2)

    def forward(self, x):
        return self.net(x)


def train_jbu(
    extract_lr,
    train_imgs,
    feat_dim,
    stages,
    kernel,
    steps,
    batch,
    views,
    max_pad,
    seed=0,
    downsampler='attention',
    lr=1e-3,
):
    torch.manual_seed(seed)
    jbu = JBUStack(feat_dim, num_stages=stages)
    down = build_downsampler(downsampler, feat_dim, kernel)
    scale = UncertaintyHead(feat_dim)
    params = list(jbu.parameters()) + list(down.parameters()) + list(scale.parameters())
    opt = torch.optim.NAdam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for m in (jbu, down, scale):
        m.train()
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, len(train_imgs), (batch,), generator=gen)
        img = train_imgs[idx]
        losses = multiview_loss(
            img,
            extract_lr,
            lambda lr, im: jbu(lr, im, output_size=im.shape[-2:]),
            down,
            scale,
            gen,
            n_views=views,
            max_pad=max_pad,
            max_zoom=2.0,
            proj_dim=30 if feat_dim > 30 else None,
        )
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        clip_early_gradients(params, step)  # FeatUp: norm 1e-4 for the first 10 steps
        opt.step()
    return jbu.eval(), time.time() - t0


def rel_err(pred, truth):
    return float((pred - truth).square().mean() / (truth - truth.mean((2, 3), keepdim=True)).square().mean())


def upsamplers(lr, img, jbu, jbu0, extract_lr, args, seed):
    size = img.shape[-2:]
    out = {
        'bilinear': F.interpolate(lr, size, mode='bilinear', align_corners=False),
        'bicubic': F.interpolate(lr, size, mode='bicubic', align_corners=False),
    }
    with torch.no_grad():
        out['JBU (untrained)'] = jbu0(lr, img, output_size=size)
        out['JBU (trained)'] = jbu(lr, img, output_size=size)
    if args.implicit_steps > 0:
        model, _ = fit_implicit(
            img,
            extract_lr,
            steps=args.implicit_steps,
            views=args.implicit_views,
            max_pad=args.max_pad,
            pca_views=20,
            seed=seed,
        )
        out['implicit'] = model.features(size)
    return out


def task_truth(args):
    size, stride = args.size, args.stride
    truth = TruthField()
    backbone = PooledTruth(truth, stride)
    train, test = images('train', args.train_images, size), images('val', args.test_images, size)
    stages = num_x2_stages(stride)
    jbu, secs = train_jbu(
        backbone,
        train,
        16,
        stages,
        stride,
        args.steps,
        args.batch,
        args.views,
        args.max_pad,
        downsampler=args.downsampler,
        lr=args.lr,
    )
    torch.manual_seed(1)
    jbu0 = JBUStack(16, num_stages=stages).eval()
    errs = {}
    t0 = time.time()
    for i in range(len(test)):
        img = test[i : i + 1]
        lr, hr = backbone(img), truth(img)
        for name, pred in upsamplers(lr, img, jbu, jbu0, backbone, args, i).items():
            errs.setdefault(name, []).append(rel_err(pred, hr))
    return errs, secs, time.time() - t0


def task_views(args):
    size = 64
    backbone = TinyViT()
    train, test = images('train', args.train_images, size), images('val', args.test_images, size)
    stages, kernel = 3, 8
    jbu, secs = train_jbu(
        backbone,
        train,
        64,
        stages,
        kernel,
        args.steps,
        args.batch,
        args.views,
        6,
        downsampler=args.downsampler,
        lr=args.lr,
    )
    torch.manual_seed(1)
    jbu0 = JBUStack(64, num_stages=stages).eval()
    pool = BlurDownsampler(kernel)  # uniform: the same fixed pooling for every method
    gen = torch.Generator().manual_seed(123)
    errs = {}
    t0 = time.time()
    for i in range(len(test)):
        img = test[i : i + 1]
        lr = backbone(img)
        ups = upsamplers(lr, img, jbu, jbu0, backbone, argparse.Namespace(**{**vars(args), 'max_pad': 6}), i)
        for _ in range(args.eval_views):
            t = sample_jitter(img.shape[-2:], 6, 2.0, generator=gen)
            target = backbone(apply_jitter(img, t))
            with torch.no_grad():
                for name, hr in ups.items():
                    errs.setdefault(name, []).append(rel_err(pool(apply_jitter(hr, t), target.shape[-2:]), target))
    return errs, secs, time.time() - t0


def task_implicit(args):
    """Implicit FeatUp at FeatUp's geometry: 224 px images, a stride-16 observation of the known truth field
    (14x14 'tokens', like ViT-S/16). Each variant fits every held-out image with the same steps and views;
    reported per variant: error vs the truth at 224 px and seconds per fit."""
    size, stride = 224, 16
    truth = TruthField()
    backbone = PooledTruth(truth, stride)
    test = images('val', args.test_images, size)
    variants = {
        # fresh views: FeatUp draws from a bank of 3000; at 300 steps x 4 views nearly every draw is a new view
        'FeatUp (fresh views, fitted at 224 px)': dict(view_bank=False, fit_size=None),
        'view bank, fitted at 224 px': dict(view_bank=True, fit_size=None),
        'CPU preset (view bank, fitted at 112 px)': dict(view_bank=True, fit_size=112),
    }
    errs, secs = {}, {}
    for i in range(len(test)):
        img = test[i : i + 1]
        lr, hr = backbone(img), truth(img)
        errs.setdefault('bilinear', []).append(
            rel_err(F.interpolate(lr, (size, size), mode='bilinear', align_corners=False), hr)
        )
        for name, kw in variants.items():
            t0 = time.time()
            model, _ = fit_implicit(
                img,
                backbone,
                steps=args.implicit_steps,
                views=args.implicit_views,
                max_pad=30,
                max_zoom=1.8,
                pca_views=50,
                seed=i,
                **kw,
            )
            secs.setdefault(name, []).append(time.time() - t0)
            errs.setdefault(name, []).append(rel_err(model.features((size, size)), hr))
    return errs, secs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--task', choices=['both', 'truth', 'views', 'implicit'], default='both')
    p.add_argument('--steps', type=int, default=200, help='JBU training steps')
    p.add_argument('--batch', type=int, default=4)
    p.add_argument('--downsampler', default='attention', choices=['attention', 'blur'])
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--views', type=int, default=3, help='jittered views per training step')
    p.add_argument('--train-images', type=int, default=32)
    p.add_argument('--test-images', type=int, default=4)
    p.add_argument('--eval-views', type=int, default=8)
    p.add_argument('--size', type=int, default=64, help='image size of the truth task')
    p.add_argument('--stride', type=int, default=8, help='pooling of the truth task (a power of 2)')
    p.add_argument('--max-pad', type=int, default=6)
    p.add_argument('--implicit-steps', type=int, default=150)
    p.add_argument('--implicit-views', type=int, default=3)
    p.add_argument('--quick', action='store_true', help='tiny run to check the script (numbers meaningless)')
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.train_images, args.test_images, args.eval_views, args.implicit_steps = 3, 4, 1, 2, 3
    print(
        'command: python3 tools/benchmarks/benchmark_quality.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
    )
    print(f'torch {torch.__version__}, threads {torch.get_num_threads()}')
    if args.task == 'implicit':
        errs, secs = task_implicit(args)
        print(
            f'\n[implicit] 224 px, stride-16 truth, {args.implicit_steps} steps x {args.implicit_views} views, '
            f'{args.test_images} held-out images'
        )
        print('| method | relative error vs truth | vs bilinear | seconds per 224 px fit |')
        print('|---|---|---|---|')
        base = sum(errs['bilinear']) / len(errs['bilinear'])
        for name, vals in errs.items():
            m = sum(vals) / len(vals)
            t = f'{sum(secs[name]) / len(secs[name]):.0f}' if name in secs else '-'
            print(f'| {name} | {m:.4f} | {m / base:.2f}x | {t} |')
        return 0
    for task, fn in (('truth', task_truth), ('views', task_views)):
        if args.task not in ('both', task):
            continue
        errs, secs, eval_secs = fn(args)
        print(
            f'\n[{task}] JBU trained {args.steps} steps in {secs:.0f}s; evaluation (incl. implicit fits) '
            f'{eval_secs:.0f}s'
        )
        print(
            '| method | relative error (mean over held-out '
            + ('images' if task == 'truth' else 'views')
            + ') | vs bilinear |'
        )
        print('|---|---|---|')
        base = sum(errs['bilinear']) / len(errs['bilinear'])
        for name, vals in errs.items():
            m = sum(vals) / len(vals)
            print(f'| {name} | {m:.4f} | {m / base:.2f}x |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
