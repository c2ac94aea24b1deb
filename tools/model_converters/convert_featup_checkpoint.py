#!/usr/bin/env python3
"""Convert an official FeatUp JBU checkpoint into a state dict for ``featup_plugin.upsamplers.JBUStack``.

    python3 tools/model_converters/convert_featup_checkpoint.py dinov2_jbu_stack_cocostuff.ckpt jbu_dinov2.pth [--check]
    python3 tools/model_converters/convert_featup_checkpoint.py IN OUT --prefix upsamplers.0.  # FeatUpJBU's keys

Reads the Lightning checkpoint's ``state_dict``, keeps the ``upsampler.*`` tensors (FeatUp's ``JBUStack``), drops
``downsampler.*``, ``scale_net.*`` and ``model.*`` (training-only modules and the frozen backbone), checks every
key and shape, and writes a plain ``{key: tensor}`` dict with ``torch.save``. Then
``JBUStack(feat_dim).load_state_dict(torch.load(OUT))`` loads strictly and, in eval mode,
``JBUStack(feat_dim)(lr_feats, image)`` equals FeatUp's ``upsampler(lr_feats, image)``. feat_dim comes from the
weights (vit, dino16, dinov2: 384; clip, maskclip: 512; resnet50: 2048).

``--prefix upsamplers.0.`` writes keys for the mmseg ``FeatUpJBU`` neck (its first upsampled level); load them
with ``init_cfg=dict(type='Pretrained', checkpoint=OUT)`` (no ``prefix`` there: the keys already match the
neck's). The checkpoint is read by the project's reader (``featup_plugin.checkpoint.read_checkpoint``): tensors-only
first (``torch.load(weights_only=True)``); a file that also holds pickled Python objects needs ``--trust`` (a full
unpickle can execute code: only for files you trust); a file that is not a checkpoint is reported as such. The
conversion itself lives in ``featup_plugin/checkpoint/featup.py``; the official files are described in
``docs/checkpoints.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Convert FeatUp's *_jbu_stack_cocostuff.ckpt into a featup_plugin JBUStack state dict"
    )
    p.add_argument('input', help="FeatUp checkpoint (Lightning .ckpt, or a state dict with 'upsampler.' keys)")
    p.add_argument('output', help='where to write the converted state dict (torch.save)')
    p.add_argument(
        '--prefix',
        default='',
        help="prefix for every output key, e.g. 'upsamplers.0.' for the FeatUpJBU neck (default: none)",
    )
    p.add_argument(
        '--src-prefix',
        default='upsampler.',
        help="where the stack lives in the input (default 'upsampler.'; '' for a bare JBUStack dict)",
    )
    p.add_argument(
        '--num-stages', type=int, default=4, help='JBU stages expected (FeatUp: 4); 0 accepts any contiguous up1..upN'
    )
    p.add_argument(
        '--allow-unknown', action='store_true', help='drop unknown keys outside the stack (reported) instead of failing'
    )
    p.add_argument(
        '--trust',
        action='store_true',
        help='allow a full unpickle when the file holds Python objects besides tensors '
        '(can execute code: only for files from a trusted source)',
    )
    p.add_argument(
        '--check',
        action='store_true',
        help='build JBUStack(feat_dim), load the result strictly and run a small forward pass',
    )
    return p.parse_args(argv)


def check(state_dict, prefix: str, feat_dim: int, num_stages: int) -> str:
    """Strict load into ``JBUStack(feat_dim, num_stages)`` plus a finite forward pass; returns a summary."""
    import torch

    from featup_plugin.upsamplers import JBUStack

    stack = JBUStack(feat_dim, num_stages=num_stages)
    stripped = {k[len(prefix) :]: v for k, v in state_dict.items()}
    stack.load_state_dict(stripped, strict=True)
    stack.eval()
    gen = torch.Generator().manual_seed(0)
    src = torch.randn(1, feat_dim, 2, 3, generator=gen)
    img = torch.randn(1, 3, 2 * 2**num_stages, 3 * 2**num_stages, generator=gen)
    with torch.no_grad():
        out = stack(src.to(stack.fixup_proj[1].weight.dtype), img.to(stack.fixup_proj[1].weight.dtype))
    if not bool(torch.isfinite(out).all()):
        raise RuntimeError('the loaded JBUStack produced non-finite outputs on a random input')
    return (
        f'check: JBUStack({feat_dim}{"" if num_stages == 4 else f", num_stages={num_stages}"}) loaded strictly; '
        f'forward {list(src.shape)} -> {list(out.shape)} is finite'
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from featup_plugin.checkpoint import featup as convert

    try:
        ckpt = convert.read_checkpoint(args.input, trust=args.trust, mmap=True)  # reads only the tensors kept
        state_dict, info = convert.convert_featup_state_dict(
            ckpt,
            src_prefix=args.src_prefix,
            prefix=args.prefix,
            num_stages=args.num_stages or None,
            allow_unknown=args.allow_unknown,
        )
    except (convert.FeatUpCheckpointError, FileNotFoundError) as err:  # also NotA/UntrustedCheckpointError
        print(f'error: {err}', file=sys.stderr)
        return 1
    del ckpt

    if args.check:
        try:
            print(check(state_dict, args.prefix, info['feat_dim'], info['num_stages']))
        except Exception as err:  # a mismatch with our JBUStack: report it, write nothing
            print(f'error: --check failed: {type(err).__name__}: {err}', file=sys.stderr)
            return 1

    out = os.path.abspath(args.output)
    if os.path.exists(args.input) and os.path.exists(out) and os.path.samefile(args.input, out):
        print('error: OUT is the input file; choose another path', file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.convert_featup_', suffix='.pth', dir=os.path.dirname(out))
    os.close(fd)
    try:
        torch.save(state_dict, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600 files
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

    dropped = ', '.join(f'{k}.* ({n})' for k, n in sorted(info['dropped'].items())) or 'nothing'
    names = ', '.join(info['backbones']) or 'none of the official ones'
    print(
        f'feat_dim {info["feat_dim"]} (official checkpoints with this width: {names}), '
        f'{info["num_stages"]} stages, {len(state_dict)} tensors / {info["num_params"]} parameters '
        f'({info["dtype"]})'
    )
    print(f'dropped: {dropped}')
    if info['unknown_dropped']:
        print(f'dropped unknown keys: {", ".join(info["unknown_dropped"])}')
    if info['channel_norm'] is not None:
        w, b = info['channel_norm']['norm.weight'], info['channel_norm']['norm.bias']
        plain = bool((w == 1).all()) and bool((b == 0).all())
        print(
            "the checkpoint was trained on ChannelNorm'ed features (model.1.norm): apply "
            'featup_plugin.upsamplers.ChannelNorm(feat_dim) to the backbone output'
            + (
                ''
                if plain
                else '; its affine weights differ from the identity: load them from '
                "convert_featup_state_dict(...)[1]['channel_norm']"
            )
        )
    print(f'wrote {out}' + (f' (keys prefixed {args.prefix!r})' if args.prefix else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
