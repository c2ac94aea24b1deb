"""``FeatUpBackbone``: any detectron2 backbone (or timm model) with FeatUp's JBU stack on chosen feature(s)."""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ..checkpoint import load_stacks, read_state_dict  # read_state_dict: re-exported
from ..layers.freeze import FrozenPartsMixin
from ..upsamplers import IMAGENET_MEAN, IMAGENET_STD, ChannelNorm, JBUStack, num_x2_stages
from ..upsamplers.guidance import CHANNEL_ORDERS, imagenet_guidance, recover_rgb
from .timm_backbone import TimmBackbone

__all__ = ['FeatUpBackbone', 'IMAGENET_MEAN', 'IMAGENET_STD', 'build_base_backbone', 'read_state_dict']

logger = logging.getLogger(__name__)

INPUT_FORMATS = CHANNEL_ORDERS  # detectron2's INPUT.FORMAT values that the guidance can be recovered from


def build_base_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> Backbone:
    """The backbone that ``MODEL.FEATUP`` wraps: ``TIMM_MODEL`` if set, else ``BASE_BACKBONE`` from the registry."""
    if 'FEATUP' not in cfg.MODEL:
        raise KeyError(
            'the config has no MODEL.FEATUP: call featup_plugin.detectron2.add_featup_config(cfg) before '
            'merging a FeatUp config file'
        )
    f = cfg.MODEL.FEATUP
    if input_shape is None:
        input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    if f.TIMM_MODEL:
        if cfg.INPUT.FORMAT == 'BGR':
            logger.warning(
                'MODEL.FEATUP.TIMM_MODEL=%s gets BGR input (INPUT.FORMAT=BGR); timm weights expect RGB '
                'with their own mean/std: set INPUT.FORMAT RGB and MODEL.PIXEL_MEAN/STD',
                f.TIMM_MODEL,
            )
        kwargs = {k: v for k, v in f.TIMM_KWARGS.items()}
        kwargs.setdefault('in_chans', input_shape.channels)
        return TimmBackbone(
            f.TIMM_MODEL,
            out_indices=list(f.TIMM_OUT_INDICES),
            out_names=list(f.TIMM_OUT_NAMES),
            pretrained=f.TIMM_PRETRAINED or None,
            **kwargs,
        )
    name = f.BASE_BACKBONE
    if name in ('FeatUpBackbone', 'build_featup_fpn_backbone'):
        raise ValueError(
            f'MODEL.FEATUP.BASE_BACKBONE={name!r} would wrap itself: name the backbone to wrap, '
            'e.g. build_resnet_backbone'
        )
    try:
        builder = BACKBONE_REGISTRY.get(name)
    except KeyError:
        raise KeyError(
            f"MODEL.FEATUP.BASE_BACKBONE={name!r} is not in detectron2's BACKBONE_REGISTRY "
            f'(registered: {sorted(k for k, _ in BACKBONE_REGISTRY)})'
        ) from None
    base = builder(cfg, input_shape)
    if not isinstance(base, Backbone):
        raise TypeError(f'{name} built a {type(base).__name__}, not a detectron2 Backbone')
    return base


@BACKBONE_REGISTRY.register()
class FeatUpBackbone(FrozenPartsMixin, Backbone):
    """Wraps a detectron2 :class:`Backbone` and upsamples chosen output(s) with FeatUp's JBU stack, guided by
    the input image.

    ``forward(x)`` receives what any detectron2 backbone receives: the batch normalised by the meta
    architecture, ``(image - pixel_mean) / pixel_std`` in ``input_format`` channel order, padded to
    ``size_divisibility``. The wrapper recovers RGB in [0, 1] from it and feeds the JBU range MLP
    ImageNet-normalised RGB (what FeatUp's trained upsamplers see; the padding becomes ``pixel_mean``).

    Args:
        base: the wrapped backbone.
        in_features: base outputs to upsample (default: the coarsest one).
        output_stride: stride of the upsampled map(s) relative to the input (default 4). The map of an
            ``H x W`` input has size ``ceil(H / s) x ceil(W / s)``.
        scale_factor: instead of ``output_stride``: stride = base stride / scale_factor (must be an integer).
        mode: ``'replace'``: the upsampled map keeps the base feature's name (with the new stride);
            ``'append'``: the base feature stays and the upsampled map is added as ``out_names``.
        out_names: names of the appended maps (default ``['featup']`` for one feature, else
            ``['featup_<name>', ...]``).
        num_stages: x2 JBU stages per upsampler (default: the fewest that reach the stride,
            ``ceil(log2(base stride / output stride))``, so every parameter gets gradients).
        radius, key_dim: JBU window radius and range-key width (FeatUp: 3, 32).
        channel_norm: LayerNorm over channels before upsampling (FeatUp does this on backbone features).
        pixel_mean, pixel_std, input_format: the meta architecture's normalisation (``MODEL.PIXEL_MEAN``,
            ``MODEL.PIXEL_STD``, 0-255 scale) and ``INPUT.FORMAT`` (``'BGR'``, ``'RGB'`` or ``'L'``).
        weights, weights_prefix: upsampler weights to load (see :meth:`load_upsampler_weights`).
        freeze_upsampler, freeze_base: keep that part in eval mode with ``requires_grad=False``.

    Output shapes: the base's, with the upsampled feature(s) at the new stride (same channels).
    ``size_divisibility`` is the least common multiple of the base's (or its ``padding_constraints``'),
    the strides of the upsampled base features and the output strides, so the maps line up with the padded
    image exactly; ``padding_constraints`` is the base's with that ``size_divisibility`` (``square_size`` kept).
    """

    @configurable
    def __init__(
        self,
        base: Backbone,
        *,
        in_features: Optional[Sequence[str]] = None,
        output_stride: int = 4,
        scale_factor: Optional[float] = None,
        mode: str = 'replace',
        out_names: Optional[Sequence[str]] = None,
        num_stages: Optional[int] = None,
        radius: int = 3,
        key_dim: int = 32,
        channel_norm: bool = True,
        pixel_mean: Sequence[float] = (103.530, 116.280, 123.675),
        pixel_std: Sequence[float] = (1.0, 1.0, 1.0),
        input_format: str = 'BGR',
        weights: Optional[str] = None,
        weights_prefix: str = '',
        freeze_upsampler: bool = False,
        freeze_base: bool = False,
    ):
        super().__init__()
        if not isinstance(base, Backbone):
            raise TypeError(f'FeatUpBackbone wraps a detectron2 Backbone, got {type(base).__name__}')
        self.base = base
        base_shapes = OrderedDict(base.output_shape())
        if not base_shapes:
            raise ValueError(f'{type(base).__name__} has no outputs')
        if in_features is None or len(in_features) == 0:
            in_features = [max(base_shapes, key=lambda n: base_shapes[n].stride)]
        self.in_features: List[str] = [str(n) for n in in_features]
        for name in self.in_features:
            if name not in base_shapes:
                raise ValueError(
                    f'FeatUpBackbone: in_features {self.in_features} are not all outputs of '
                    f'{type(base).__name__} ({list(base_shapes)})'
                )
        if len(set(self.in_features)) != len(self.in_features):
            raise ValueError(f'FeatUpBackbone: in_features has duplicates: {self.in_features}')
        if mode not in ('replace', 'append'):
            raise ValueError(f"FeatUpBackbone: mode must be 'replace' or 'append', got {mode!r}")
        self.mode = mode

        # names of the upsampled maps
        if mode == 'replace':
            if out_names:
                raise ValueError(
                    "FeatUpBackbone: out_names only applies to mode='append' (in 'replace' mode the "
                    'upsampled maps keep the base names)'
                )
            names = list(self.in_features)
        else:
            if out_names:
                names = [str(n) for n in out_names]
                if len(names) != len(self.in_features):
                    raise ValueError(f'FeatUpBackbone: {len(names)} out_names for {len(self.in_features)} in_features')
            else:
                names = ['featup'] if len(self.in_features) == 1 else [f'featup_{n}' for n in self.in_features]
            clash = [n for n in names if n in base_shapes]
            if clash or len(set(names)) != len(names):
                raise ValueError(
                    f'FeatUpBackbone: appended names {names} must be unique and differ from the base '
                    f'outputs {list(base_shapes)}'
                )
        self.out_names: Dict[str, str] = dict(zip(self.in_features, names))

        # strides and stage counts
        self.output_strides: Dict[str, int] = {}
        stages: Dict[str, int] = {}
        for name in self.in_features:
            base_stride = int(base_shapes[name].stride)
            if scale_factor:
                s = base_stride / float(scale_factor)
                if s < 1 - 1e-6 or abs(s - round(s)) > 1e-6:
                    raise ValueError(
                        f'FeatUpBackbone: scale_factor {scale_factor} takes {name} (stride '
                        f'{base_stride}) to stride {s:g}; detectron2 needs an integer stride >= 1'
                    )
                s = int(round(s))
            else:
                s = int(output_stride)
                if s != output_stride or s < 1:
                    raise ValueError(f'FeatUpBackbone: output_stride must be a positive int, got {output_stride!r}')
            if s > base_stride:
                raise ValueError(
                    f"FeatUpBackbone: output stride {s} is coarser than {name}'s stride {base_stride}: "
                    'the JBU stack only upsamples'
                )
            self.output_strides[name] = s
            stages[name] = int(num_stages) if num_stages else num_x2_stages(base_stride / s)

        # modules (keyed by feature name; dots are not allowed in module names)
        self.upsamplers = nn.ModuleDict()
        self.norms = nn.ModuleDict()
        for name in self.in_features:
            ch = int(base_shapes[name].channels)
            self.upsamplers[self._key(name)] = JBUStack(ch, num_stages=stages[name], radius=radius, key_dim=key_dim)
            self.norms[self._key(name)] = ChannelNorm(ch) if channel_norm else nn.Identity()

        # output shapes: the base's, then the appended ones
        self._out_features = list(base_shapes)
        self._out_feature_channels = {n: int(s.channels) for n, s in base_shapes.items()}
        self._out_feature_strides = {n: int(s.stride) for n, s in base_shapes.items()}
        for name in self.in_features:
            out = self.out_names[name]
            if out not in self._out_feature_strides:
                self._out_features.append(out)
            self._out_feature_channels[out] = int(base_shapes[name].channels)
            self._out_feature_strides[out] = self.output_strides[name]

        base_div = int(base.padding_constraints.get('size_divisibility', 0) or base.size_divisibility or 1)
        self._size_divisibility = math.lcm(
            base_div, *(int(base_shapes[n].stride) for n in self.in_features), *self.output_strides.values()
        )

        # guidance: ImageNet-normalised RGB recovered from the normalised batch (featup_plugin.upsamplers.guidance)
        fmt = str(input_format).upper()
        if fmt not in INPUT_FORMATS:
            raise ValueError(f'FeatUpBackbone: input_format must be one of {INPUT_FORMATS}, got {input_format!r}')
        n_in = 1 if fmt == 'L' else 3
        if len(pixel_mean) != n_in or len(pixel_std) != n_in:
            raise ValueError(
                f'FeatUpBackbone: input_format {fmt} needs {n_in} pixel_mean/pixel_std values, got '
                f'{list(pixel_mean)} / {list(pixel_std)}'
            )
        self.input_format = fmt
        self.pixel_mean = tuple(float(m) for m in pixel_mean)
        self.pixel_std = tuple(float(s) for s in pixel_std)
        self.freeze_upsampler = bool(freeze_upsampler)
        self.freeze_base = bool(freeze_base)
        if weights:
            self.load_upsampler_weights(weights, weights_prefix)
        self.freeze_parts()

    @classmethod
    def from_config(cls, cfg, input_shape: Optional[ShapeSpec] = None):
        base = build_base_backbone(cfg, input_shape)  # first: it checks that the cfg has MODEL.FEATUP
        f = cfg.MODEL.FEATUP
        return dict(
            base=base,
            in_features=list(f.IN_FEATURES) or None,
            output_stride=f.OUTPUT_STRIDE,
            scale_factor=f.SCALE_FACTOR if f.SCALE_FACTOR > 0 else None,
            mode=f.MODE,
            out_names=list(f.OUT_NAMES) or None,
            num_stages=f.NUM_STAGES or None,
            radius=f.RADIUS,
            key_dim=f.KEY_DIM,
            channel_norm=f.CHANNEL_NORM,
            pixel_mean=list(cfg.MODEL.PIXEL_MEAN),
            pixel_std=list(cfg.MODEL.PIXEL_STD),
            input_format=cfg.INPUT.FORMAT,
            weights=f.WEIGHTS or None,
            weights_prefix=f.WEIGHTS_PREFIX,
            freeze_upsampler=f.FREEZE_UPSAMPLER,
            freeze_base=f.FREEZE_BASE,
        )

    @staticmethod
    def _key(name: str) -> str:
        return name.replace('.', '_')

    def upsampler(self, name: str) -> JBUStack:
        """The JBU stack of base feature ``name``."""
        return self.upsamplers[self._key(name)]

    # -- detectron2 Backbone interface ------------------------------------------------------------------------
    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        constraints = dict(self.base.padding_constraints)
        constraints['size_divisibility'] = self._size_divisibility
        return constraints

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return OrderedDict(
            (n, ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n]))
            for n in self._out_features
        )

    # -- guidance ---------------------------------------------------------------------------------------------
    def recover_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] (``[B, 3, H, W]``) from the normalised batch the backbone receives."""
        return recover_rgb(x, self.pixel_mean, self.pixel_std, self.input_format, who='FeatUpBackbone')

    def guidance(self, x: torch.Tensor) -> torch.Tensor:
        """The JBU guidance: ImageNet-normalised RGB recovered from the normalised batch."""
        return imagenet_guidance(x, self.pixel_mean, self.pixel_std, self.input_format, who='FeatUpBackbone')

    # -- forward ----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        feats = self.base(x)
        guidance = self.guidance(x)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        out = OrderedDict((n, feats[n]) for n in self._out_features if n in feats)
        for name in self.in_features:
            feat = feats[name]
            s = self.output_strides[name]
            size = (-(-h // s), -(-w // s))
            key = self._key(name)
            up = self.upsamplers[key](self.norms[key](feat), guidance.to(feat.dtype), output_size=size)
            out[self.out_names[name]] = up
        return OrderedDict((n, out[n]) for n in self._out_features)

    # -- weights ----------------------------------------------------------------------------------------------
    def load_upsampler_weights(self, path_or_state: Union[str, Mapping[str, torch.Tensor]], prefix: str = '') -> None:
        """Loads JBU upsampler weights.

        ``path_or_state``: a file (``torch.save`` / ``.safetensors``; a ``state_dict`` or ``model`` entry is
        unwrapped) or a dict of tensors. Only keys starting with ``prefix`` are used, with the prefix removed.
        The stacks are found by :func:`featup_plugin.checkpoint.assign_upsampler_stacks` (the layouts
        the mmseg neck reads too): one stack per upsampled feature under ``<feature>.`` (what
        ``self.upsamplers.state_dict()`` saves) or ``...upsamplers.<feature>.`` (a checkpoint of a detectron2
        model with this backbone), or, for a backbone upsampling one feature, a single bare ``JBUStack``
        (``up1.range_temp``, ..., ``fixup_proj.1.weight``) or one under ``upsampler.`` (FeatUp's checkpoints and
        those of the upsampler training ``FeatUpJBUTrainer``, whose ``scale_net.*`` / ``downsampler.*`` /
        ``backbone.*`` are ignored). Stacks under any other prefix raise an error that names it.

        Stages the file has beyond those built (``upN`` with N > num_stages; e.g. FeatUp's x16 stack used for
        x8) are dropped with a log line; a missing or mis-shaped parameter raises ``UpsamplerMismatchError`` (a
        ``RuntimeError``). Channel norms saved beside the stacks (``...norms.<feature>.``) load too. All this is
        :func:`featup_plugin.checkpoint.load_stacks`.
        """
        source = path_or_state if isinstance(path_or_state, str) else 'the given state dict'
        loaded = load_stacks(
            self.upsamplers,
            path_or_state,
            prefix,
            norms=self.norms,
            who='FeatUpBackbone',
            where=source,
            log=logger.info,
        )
        logger.info('FeatUpBackbone: loaded the %s upsampler(s) from %s', ', '.join(loaded), source)

    # -- freezing ---------------------------------------------------------------------------------------------
    def frozen_parts(self):
        return ([self.upsamplers, self.norms] if self.freeze_upsampler else []) + (
            [self.base] if self.freeze_base else []
        )
