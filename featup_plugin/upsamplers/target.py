"""Where a neck's upsampled level ends up: shared by FeatUpJBU and its bilinear twin, so both give equal sizes.

Details: docs/jbu.md#target-sizes-of-the-necks
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

from .jbu import num_x2_stages


def check_target(out_size: Optional[str], scale_factor: Optional[float], output_stride: Optional[int]) -> None:
    given = sum(x is not None for x in (out_size, scale_factor, output_stride))
    if given != 1:
        raise ValueError(
            'give exactly one of out_size, scale_factor, output_stride '
            f'(got out_size={out_size!r}, scale_factor={scale_factor!r}, '
            f'output_stride={output_stride!r}); set out_size=None to use the others'
        )
    if out_size is not None and out_size != 'image':
        raise ValueError(f"out_size must be 'image' or None, got {out_size!r}")
    if scale_factor is not None and not scale_factor > 0:
        raise ValueError(f'scale_factor must be positive, got {scale_factor!r}')
    if output_stride is not None and (int(output_stride) != output_stride or output_stride < 1):
        raise ValueError(f'output_stride must be a positive int, got {output_stride!r}')


def target_size(
    feat_hw: Sequence[int],
    image_hw: Sequence[int],
    out_size: Optional[str],
    scale_factor: Optional[float],
    output_stride: Optional[int],
) -> Tuple[int, int]:
    """(H, W) of an upsampled level: the image size, ``round(feat * scale_factor)`` or ``ceil(image / stride)``
    (ceil matches how strided backbones size their maps on inputs not divisible by the stride)."""
    if out_size == 'image':
        return int(image_hw[0]), int(image_hw[1])
    if scale_factor is not None:
        return max(1, round(feat_hw[0] * scale_factor)), max(1, round(feat_hw[1] * scale_factor))
    s = int(output_stride)
    return max(1, -(-int(image_hw[0]) // s)), max(1, -(-int(image_hw[1]) // s))


def derive_num_stages(
    in_index: Sequence[int],
    in_channels: Optional[Sequence[int]],
    feature_strides: Union[None, int, Sequence[int]],
    scale_factor: Optional[float],
    output_stride: Optional[int],
    default: int = 4,
) -> List[int]:
    """x2 stages per upsampled level (``in_index``) of a guided neck: from ``scale_factor``, else from each level's
    stride (``feature_strides``: one int, or a list as long as ``in_channels``) over the target stride
    (``output_stride``, 1 for the image size), else ``default`` (FeatUp's 4)."""
    if scale_factor is not None:
        return [num_x2_stages(scale_factor)] * len(in_index)
    if feature_strides is None:
        return [default] * len(in_index)
    if isinstance(feature_strides, (list, tuple)):
        if in_channels is None or len(feature_strides) != len(in_channels):
            raise ValueError('feature_strides must be a list as long as in_channels, or one int')
        strides = [feature_strides[i] for i in in_index]
    else:
        strides = [feature_strides] * len(in_index)
    target = output_stride or 1
    return [num_x2_stages(s / target) for s in strides]
