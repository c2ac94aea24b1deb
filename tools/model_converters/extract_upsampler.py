#!/usr/bin/env python3
"""Write the bare JBU stack of an upsampler-training checkpoint as a small state dict.

    python3 tools/model_converters/extract_upsampler.py work_dirs/jbu_.../iter_2000.pth jbu.pth [--prefix upsampler.]

The output (keys ``up1.*`` ... ``fixup_proj.*``) loads into ``JBUStack(feat_dim, num_stages)``,
``FeatUpJBU(init_cfg=dict(type='Pretrained', checkpoint='jbu.pth'))`` and ``MODEL.FEATUP.WEIGHTS``. Training
checkpoints load there as they are too; this drops the frozen backbone and the optimizer state.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('checkpoint', help='a checkpoint of FeatUpJBUTrainer (tools/train.py configs/*/jbu_*)')
    p.add_argument('out', help='output file (.pth, or .safetensors)')
    p.add_argument('--prefix', default='upsampler.', help="where the stack lives (default 'upsampler.')")
    args = p.parse_args(argv)
    import torch

    from featup_plugin.checkpoint import extract_upsampler_state_dict, read_state_dict

    sd, info = extract_upsampler_state_dict(read_state_dict(args.checkpoint), args.prefix)
    if args.out.endswith('.safetensors'):
        from safetensors.torch import save_file

        save_file(dict(sd), args.out)
    else:
        torch.save(sd, args.out)
    left = ', '.join(f'{k} ({n})' for k, n in sorted(info['left_out'].items()))
    print(
        f'wrote {args.out}: JBUStack(feat_dim={info["feat_dim"]}, num_stages={info["num_stages"]}), '
        f'{len(sd)} tensors; left out: {left}'
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
