#!/usr/bin/env python3
"""Export an mmseg segmentor (config + checkpoint, featup_plugin registered) to ONNX and check it against PyTorch.

python3 tools/deploy/export_onnx.py CONFIG CHECKPOINT OUT.onnx [--shape H W] [--batch B] [--output logits|labels]
    [--raw-input] [--opset 18] [--no-check] [--json RESULT.json] [--cfg-options k=v ...]

The graph is whole-image inference at the fixed H x W (default: the slide crop or the config's ``crop_size``,
else 512 x 512) with a dynamic batch axis; standard ONNX ops only. The check runs onnxruntime (CPU) and PyTorch
on one random input, prints the max difference, the label agreement, the ONNX op count and both latencies, and
exits 1 if they disagree (max relative difference above --tol). See docs/deploy.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from mmengine.config import DictAction


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Export an mmseg segmentor to ONNX and check it against PyTorch')
    p.add_argument('config', help='config file path')
    p.add_argument('checkpoint', help="checkpoint file (mmengine's, or a state dict); 'none' keeps the init weights")
    p.add_argument('out', help='output .onnx file')
    p.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'), help='input size (default: the crop size)')
    p.add_argument('--batch', type=int, default=1, help='batch size of the export / check input (axis is dynamic)')
    p.add_argument('--output', choices=('logits', 'labels'), default='logits')
    p.add_argument('--raw-input', action='store_true', help='take 0..255 images; normalise inside the graph')
    p.add_argument('--opset', type=int, default=18, help='ONNX opset (18+: antialiased Resize, for timm ViTs)')
    p.add_argument('--no-check', action='store_true', help='skip the onnxruntime comparison')
    p.add_argument('--tol', type=float, default=1e-4, help='max relative difference allowed by the check')
    p.add_argument('--json', help='write the check result here')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None, help='override config entries')
    return p.parse_args(argv)


def build_model(config: str, checkpoint: str, cfg_options=None):
    import torch
    from mmengine.config import Config
    from mmengine.runner import load_checkpoint
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    import featup_plugin.mmseg  # noqa: F401  (registers the modules)
    from featup_plugin.mmseg.engine import use_mmengine_checkpoint_loader

    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    model_cfg = cfg.model
    if 'data_preprocessor' in cfg and model_cfg.get('data_preprocessor') is None:
        model_cfg.data_preprocessor = cfg.data_preprocessor
    model = MODELS.build(model_cfg)
    if checkpoint.lower() != 'none':
        use_mmengine_checkpoint_loader()
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    model.eval()
    torch.set_grad_enabled(False)
    return cfg, model


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from featup_plugin.mmseg.deploy import SegmentorForExport, check_onnx, export_onnx

    cfg, model = build_model(args.config, args.checkpoint, args.cfg_options)
    if args.shape:
        h, w = args.shape
    else:
        test_cfg = cfg.model.get('test_cfg') or {}
        crop = test_cfg.get('crop_size') if test_cfg.get('mode') == 'slide' else None
        crop = crop or cfg.get('crop_size', None)
        h, w = (int(crop[0]), int(crop[1])) if crop else (512, 512)
        print(f'input size {h} x {w} (' + ('the crop size' if crop else 'default') + '; --shape H W to choose)')
    wrapper = SegmentorForExport(model, output=args.output, raw_input=args.raw_input)
    shape = (args.batch, 3, h, w)
    export_onnx(wrapper, args.out, shape, opset=args.opset)
    print(f'exported {args.out}: input image {list(shape)} (batch dynamic, H x W fixed), output {args.output}')
    if args.no_check:
        return 0
    torch.manual_seed(0)
    # a raw 0..255 image, or a preprocessed (normalised) batch
    sample = torch.rand(*shape) * 255.0 if args.raw_input else torch.randn(*shape)
    res = check_onnx(args.out, wrapper, sample)
    res.update(config=args.config, checkpoint=args.checkpoint, input_shape=list(shape), output=args.output)
    ok = res.get('max_rel_diff', 0.0) <= args.tol and res['label_agreement'] >= 0.999 and res['standard_ops_only']
    print(
        f'onnxruntime vs PyTorch: max abs diff {res.get("max_abs_diff", 0.0):.3g}, '
        f'max rel diff {res.get("max_rel_diff", 0.0):.3g}, label agreement {100 * res["label_agreement"]:.2f}%'
    )
    print(f'ONNX graph: {res["op_count"]} ops, standard domains only: {res["standard_ops_only"]}')
    print(
        f'latency (CPU, batch {args.batch}): PyTorch {res["torch_ms"]:.1f} ms, '
        f'onnxruntime {res["onnxruntime_ms"]:.1f} ms'
    )
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(res, f, indent=1)
    if not ok:
        print(f'CHECK FAILED (tolerance {args.tol})', file=sys.stderr)
        return 1
    print('CHECK PASSED')
    return 0


if __name__ == '__main__':
    sys.exit(main())
