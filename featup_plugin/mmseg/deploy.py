"""ONNX export of a whole mmseg segmentor (any ``EncoderDecoder``: ``GuidedEncoderDecoder`` with ``FeatUpJBU``,
a ``PacHotSwap`` model, plain ones) for onnxruntime / TensorRT / mmdeploy-style deployment.

The exported graph is whole-image inference: ``image [B, 3, H, W] -> logits [B, num_classes, H, W]`` (or labels),
the decode head's output resized to the input as mmseg's ``predict`` does. Under export the JBU and PAC ops run
their pure-PyTorch tap loops, so the graph holds standard ONNX ops only (no custom domain). Batch is dynamic; H
and W are fixed at export (the JBU stack plans its ×2 stages and guidance pooling from the sizes). Slide inference
and test-time augmentation are the caller's loop, as in mmdeploy.

Details and measured figures: docs/deploy.md
"""

from __future__ import annotations

import collections
import time
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['SegmentorForExport', 'export_onnx', 'check_onnx', 'onnx_op_counts']


class SegmentorForExport(nn.Module):
    """``forward(image)``: the segmentor's whole-image prediction as one tensor.

    Args:
        segmentor: an mmseg ``EncoderDecoder`` (or subclass) in eval mode.
        output: ``'logits'`` (``[B, K, H, W]`` float) or ``'labels'`` (``[B, H, W]`` int64 argmax; a sigmoid
            head with one output class thresholds at its ``threshold``).
        raw_input: the graph takes the raw ``0..255`` image in the dataset's channel order and applies the data
            preprocessor's channel flip and ``mean`` / ``std`` itself; otherwise it takes the preprocessed batch.
    """

    def __init__(self, segmentor: nn.Module, output: str = 'logits', raw_input: bool = False):
        super().__init__()
        for attr in ('extract_feat', 'decode_head'):
            if not hasattr(segmentor, attr):
                raise TypeError(
                    f'SegmentorForExport: {type(segmentor).__name__} is not an mmseg EncoderDecoder (no {attr})'
                )
        if output not in ('logits', 'labels'):
            raise ValueError(f"SegmentorForExport: output must be 'logits' or 'labels', got {output!r}")
        self.segmentor = segmentor
        self.output = output
        self.raw_input = raw_input
        dp = getattr(segmentor, 'data_preprocessor', None)
        mean, std = getattr(dp, 'mean', None), getattr(dp, 'std', None)
        if raw_input and (mean is None or std is None):
            raise ValueError('SegmentorForExport: raw_input=True needs a data preprocessor with mean and std')
        flip = bool(getattr(dp, 'channel_conversion', False)) if raw_input else False
        self.flip_channels = flip
        self.register_buffer('mean', None if mean is None else mean.detach().clone().view(1, -1, 1, 1), False)
        self.register_buffer('std', None if std is None else std.detach().clone().view(1, -1, 1, 1), False)
        self.training = segmentor.training  # the wrapper's own flag only: submodules keep theirs

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.raw_input:
            if self.flip_channels:
                image = image.flip(1)
            image = (image - self.mean) / self.std
        seg = self.segmentor
        logits = seg.decode_head(seg.extract_feat(image))
        logits = F.interpolate(logits, size=image.shape[2:], mode='bilinear', align_corners=seg.align_corners)
        if self.output == 'logits':
            return logits
        if logits.shape[1] == 1:
            threshold = getattr(seg.decode_head, 'threshold', 0.3)
            return (logits.sigmoid() > threshold).squeeze(1).long()
        return logits.argmax(1)


def _antialiased_resize(mode: str):
    """ONNX symbolic of ``aten::_upsample_{bicubic,bilinear}2d_aa`` (``F.interpolate(..., antialias=True)``, which
    timm uses to resample a ViT's position embedding): opset 18's ``Resize`` with ``antialias=1``,
    ``exclude_outside=1`` and, for cubic, ``a = -0.5`` is the same filter (onnxruntime equals PyTorch to 1e-6)."""

    def symbolic(g, x, output_size, align_corners, scales_h=None, scales_w=None):
        from torch.onnx import symbolic_helper as sh

        size = sh._maybe_get_const(output_size, 'is')
        if isinstance(size, (list, tuple)):
            size = g.op('Constant', value_t=torch.tensor(list(size), dtype=torch.int64))
        elif sh._is_packed_list(output_size):  # sizes computed in the graph (from the input's shape)
            axes = g.op('Constant', value_t=torch.tensor([0]))
            dims = [g.op('Cast', g.op('Unsqueeze', v, axes), to_i=7) for v in sh._unpack_list(output_size)]
            size = g.op('Concat', *dims, axis_i=0)
        else:
            size = g.op('Cast', output_size, to_i=7)  # an int64 tensor already
        corners = bool(sh._maybe_get_const(align_corners, 'b'))
        lead = g.op(
            'Slice',
            g.op('Shape', x),
            g.op('Constant', value_t=torch.tensor([0])),
            g.op('Constant', value_t=torch.tensor([2])),
        )
        sizes = g.op('Concat', lead, size, axis_i=0)
        attrs = dict(
            mode_s='cubic' if mode == 'bicubic' else 'linear',
            antialias_i=1,
            exclude_outside_i=1,
            coordinate_transformation_mode_s='align_corners' if corners else 'half_pixel',
        )
        if mode == 'bicubic':
            attrs['cubic_coeff_a_f'] = -0.5
        return g.op(
            'Resize',
            x,
            g.op('Constant', value_t=torch.tensor([], dtype=torch.float32)),
            g.op('Constant', value_t=torch.tensor([], dtype=torch.float32)),
            sizes,
            **attrs,
        )

    return symbolic


_AA_OPSET = 18


def _register_symbolics(opset: int) -> None:
    if opset < _AA_OPSET:
        return  # Resize has no antialias before opset 18: such models then fail to export, naming the op
    for mode in ('bicubic', 'bilinear'):
        torch.onnx.register_custom_op_symbolic(f'aten::_upsample_{mode}2d_aa', _antialiased_resize(mode), _AA_OPSET)


def export_onnx(
    wrapper: nn.Module,
    path: str,
    input_shape: Sequence[int],
    opset: int = 18,
    dynamic_batch: bool = True,
) -> None:
    """Exports ``wrapper`` (e.g. :class:`SegmentorForExport`) with the TorchScript-based ONNX exporter, on a random
    input of ``input_shape`` ``(B, C, H, W)``; input ``image``, output ``output``, batch axis dynamic. Opset 18 or
    later exports antialiased resizes (timm ViTs' position-embedding resampling) as ``Resize(antialias=1)``."""
    if len(input_shape) != 4 or any(int(s) < 1 for s in input_shape):
        raise ValueError(f'export_onnx: input_shape must be (B, C, H, W) with positive sizes, got {input_shape}')
    _register_symbolics(opset)
    sample = torch.rand(*input_shape)
    axes = {'image': {0: 'batch'}, 'output': {0: 'batch'}} if dynamic_batch else None
    modes = [(m, m.training) for m in wrapper.modules()]
    wrapper.eval()
    try:
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                (sample,),
                path,
                dynamo=False,
                opset_version=opset,
                input_names=['image'],
                output_names=['output'],
                dynamic_axes=axes,
                do_constant_folding=True,
            )
    finally:
        for m, mode in modes:  # each module's own mode back (an eval segmentor stays in eval)
            m.training = mode


def onnx_op_counts(path: str) -> 'collections.Counter':
    """``Counter`` of ``(domain or 'ai.onnx', op_type)`` over the main graph's nodes."""
    import onnx

    graph = onnx.load(path).graph
    return collections.Counter((n.domain or 'ai.onnx', n.op_type) for n in graph.node)


def _time(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def check_onnx(
    path: str, wrapper: nn.Module, sample: torch.Tensor, reps: int = 3, threads: Optional[int] = None
) -> dict:
    """Runs the ONNX file in onnxruntime (CPU) and ``wrapper`` in PyTorch on ``sample``; returns the max abs and
    relative difference, the label agreement (for logits), the op counts, whether only standard ONNX domains
    appear, and the mean latency of both (``reps`` timed runs after one warm-up)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])
    name = sess.get_inputs()[0].name
    feed = {name: sample.numpy()}
    ours = torch.from_numpy(sess.run(None, feed)[0])
    wrapper.eval()
    with torch.no_grad():
        ref = wrapper(sample)
    counts = onnx_op_counts(path)
    result = dict(
        shape=list(ref.shape),
        op_count=sum(counts.values()),
        op_types=dict(sorted(((f'{d}::{t}' if d != 'ai.onnx' else t), n) for (d, t), n in counts.items())),
        standard_ops_only=all(d in ('ai.onnx', 'ai.onnx.ml') for d, _ in counts),
    )
    if ref.is_floating_point():
        diff = (ours - ref).abs().max().item()
        result.update(
            max_abs_diff=diff,
            max_rel_diff=diff / max(ref.abs().max().item(), 1e-30),
            label_agreement=(ours.argmax(1) == ref.argmax(1)).float().mean().item(),
        )
    else:
        result.update(label_agreement=(ours == ref).float().mean().item())
    with torch.no_grad():
        result['torch_ms'] = 1e3 * _time(lambda: wrapper(sample), reps)
    result['onnxruntime_ms'] = 1e3 * _time(lambda: sess.run(None, feed), reps)
    return result
