"""``backbone=dict(type='Detectron2Backbone', ...)``: any detectron2 backbone as a frozen feature extractor for
mmengine configs (e.g. the upsampler training ``FeatUpJBUTrainer``).

The backbone is built by detectron2 itself (``get_cfg()`` + ``add_featup_config`` + ``config_file`` + ``opts``,
then ``detectron2.modeling.build_backbone``), so every backbone in detectron2's ``BACKBONE_REGISTRY`` works
(ResNets, FPNs, RegNets, ViTDet, ``FeatUpBackbone``, third-party ones once imported)::

    backbone=dict(type='Detectron2Backbone', opts=['MODEL.RESNETS.DEPTH', 50,
                                                   'MODEL.RESNETS.OUT_FEATURES', ['res5']],
                  out_feature='res5', weights='detectron2://ImageNetPretrained/MSRA/R-50.pkl')

Input: what the mmengine side feeds (FeatUpJBUTrainer, ``ImageFolderDataset``): ImageNet-normalised RGB,
``(rgb / 255 - IMAGENET_MEAN) / IMAGENET_STD``. The wrapper turns it into what detectron2's meta architectures
feed a backbone: RGB 0-255, channels in ``INPUT.FORMAT`` order (``BGR`` by default; ``L`` = ITU-R 601 luma, as
PIL), ``(x - MODEL.PIXEL_MEAN) / MODEL.PIXEL_STD``, zero-padded (= the mean colour, as ``ImageList``) to the
backbone's ``padding_constraints``. Output: the ``out_feature`` map cropped to ``ceil(H / stride) x
ceil(W / stride)`` of the unpadded input.

detectron2 is imported only when the class is instantiated; ``import featup_plugin`` works without it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.registry import MODELS

from ...checkpoint import read_state_dict
from ...layers.freeze import FrozenPartsMixin
from ...upsamplers import IMAGENET_MEAN, IMAGENET_STD

__all__ = ['Detectron2Backbone', 'INSTALL_HINT']

INSTALL_HINT = 'install it with: bash tools/install_detectron2.sh (see configs/detectron2/README.md)'
_LUMA = (0.299, 0.587, 0.114)  # PIL's convert('L'), what detectron2's readers use for INPUT.FORMAT 'L'
# where a backbone's weights sit in the checkpoints of detectron2 models / FeatUpBackbone (tried in this order)
_PREFIXES = (
    '',
    'backbone.',
    'backbone.bottom_up.',
    'backbone.base.',
    'backbone.bottom_up.base.',
    'base.',
    'bottom_up.',
)


def _require_detectron2():
    try:
        import detectron2  # noqa: F401
    except ImportError as e:
        raise ImportError(f'Detectron2Backbone needs detectron2; {INSTALL_HINT} ({e})') from e


def _flatten_opts(opts) -> list:
    if opts is None:
        return []
    if isinstance(opts, Mapping):
        out = []
        for k, v in opts.items():
            out += [k, v]
        return out
    if isinstance(opts, (list, tuple)):
        if len(opts) % 2:
            raise ValueError(
                f'Detectron2Backbone: opts must alternate keys and values, got {len(opts)} items: {list(opts)}'
            )
        return [list(v) if isinstance(v, tuple) else v for v in opts]
    raise TypeError(f'Detectron2Backbone: opts must be a list [key, value, ...] or a dict, got {type(opts).__name__}')


def build_detectron2_cfg(config_file: Optional[str] = None, opts=None):
    """detectron2's ``get_cfg()`` with ``MODEL.FEATUP`` added, ``config_file`` and ``opts`` merged."""
    _require_detectron2()
    from detectron2.config import get_cfg

    from featup_plugin.detectron2 import add_featup_config

    cfg = add_featup_config(get_cfg())
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f'Detectron2Backbone: config_file {config_file!r} does not exist')
        cfg.merge_from_file(config_file)
    items = _flatten_opts(opts)
    if items:
        cfg.merge_from_list(items)
    return cfg


@MODELS.register_module()
class Detectron2Backbone(FrozenPartsMixin, nn.Module):
    """A frozen detectron2 backbone that takes ImageNet-normalised RGB and returns one feature map.

    Args:
        config_file: a detectron2 yaml config (optional; ``_BASE_`` works as in detectron2).
        opts: ``['KEY', value, ...]`` (or a dict) merged after the file, e.g.
            ``['MODEL.RESNETS.DEPTH', 18, 'MODEL.RESNETS.RES2_OUT_CHANNELS', 64]``.
        name: backbone name in ``BACKBONE_REGISTRY`` (default: the cfg's ``MODEL.BACKBONE.NAME``, i.e.
            ``build_resnet_backbone`` unless the file/opts change it).
        out_feature: which output to return (default: the one with the largest stride).
        weights: backbone weights: a detectron2 ``.pkl`` (model zoo ImageNet weights, converted
            torchvision/caffe2 ResNets: detectron2's ``DetectionCheckpointer`` with its name matching), or a
            ``torch.save`` / ``.safetensors`` file of a bare backbone or a whole detectron2 model (the
            backbone's keys are found under ``backbone.``, ``backbone.bottom_up.``, ... or ``weights_prefix``).
            ``detectron2://`` and ``https://`` addresses are fetched by detectron2's ``PathManager``. Every
            parameter and buffer of the backbone must be in the file (else an error names the missing ones).
        weights_prefix: key prefix of the backbone in ``weights`` (default: found automatically).
        pixel_mean, pixel_std, input_format: override ``MODEL.PIXEL_MEAN``, ``MODEL.PIXEL_STD`` (0-255 scale)
            and ``INPUT.FORMAT`` (``'BGR'``, ``'RGB'`` or ``'L'``): what the backbone's weights expect.

    Attributes: ``out_channels``, ``out_stride`` (of ``out_feature``), ``size_divisibility``, ``square_size``,
    ``cfg`` (the detectron2 config, frozen), ``model`` (the detectron2 backbone). Always in eval mode without
    gradients. :meth:`output_shapes` lists channels and strides of a config's outputs without keeping a model.
    """

    def __init__(
        self,
        config_file: Optional[str] = None,
        opts=None,
        name: Optional[str] = None,
        out_feature: Optional[str] = None,
        weights: Optional[str] = None,
        weights_prefix: Optional[str] = None,
        pixel_mean: Optional[Sequence[float]] = None,
        pixel_std: Optional[Sequence[float]] = None,
        input_format: Optional[str] = None,
    ):
        super().__init__()
        overrides = []
        if pixel_mean is not None:
            overrides += ['MODEL.PIXEL_MEAN', [float(v) for v in pixel_mean]]
        if pixel_std is not None:
            overrides += ['MODEL.PIXEL_STD', [float(v) for v in pixel_std]]
        if input_format is not None:
            overrides += ['INPUT.FORMAT', str(input_format)]
        if name is not None:
            overrides += ['MODEL.BACKBONE.NAME', str(name)]
        cfg = build_detectron2_cfg(config_file, _flatten_opts(opts) + overrides)
        self.model = self._build(cfg)
        shapes = OrderedDict((k, (int(v.channels), int(v.stride))) for k, v in self.model.output_shape().items())
        if out_feature is None:
            out_feature = max(shapes, key=lambda k: shapes[k][1])
        if out_feature not in shapes:
            raise ValueError(
                f'Detectron2Backbone: out_feature {out_feature!r} is not an output of '
                f'{cfg.MODEL.BACKBONE.NAME}; it has {self._describe(shapes)} (e.g. for ResNets, '
                "MODEL.RESNETS.OUT_FEATURES picks the outputs: opts=['MODEL.RESNETS.OUT_FEATURES', "
                f"['{out_feature}']])"
            )
        self.out_feature = str(out_feature)
        self.out_channels, self.out_stride = shapes[self.out_feature]

        fmt = str(cfg.INPUT.FORMAT).upper()
        n_in = 1 if fmt == 'L' else 3
        if fmt not in ('BGR', 'RGB', 'L'):
            raise ValueError(f"Detectron2Backbone: INPUT.FORMAT must be 'BGR', 'RGB' or 'L', got {cfg.INPUT.FORMAT!r}")
        if len(cfg.MODEL.PIXEL_MEAN) != n_in or len(cfg.MODEL.PIXEL_STD) != n_in:
            raise ValueError(
                f'Detectron2Backbone: INPUT.FORMAT {fmt} needs {n_in} MODEL.PIXEL_MEAN / PIXEL_STD '
                f'values, got {list(cfg.MODEL.PIXEL_MEAN)} / {list(cfg.MODEL.PIXEL_STD)}'
            )
        if any(float(s) <= 0 for s in cfg.MODEL.PIXEL_STD):
            raise ValueError(f'Detectron2Backbone: MODEL.PIXEL_STD must be > 0, got {list(cfg.MODEL.PIXEL_STD)}')
        self.input_format = fmt
        self.pixel_mean = tuple(float(v) for v in cfg.MODEL.PIXEL_MEAN)
        self.pixel_std = tuple(float(v) for v in cfg.MODEL.PIXEL_STD)
        # ImageNet-normalised RGB -> RGB 0-255 -> INPUT.FORMAT -> (x - PIXEL_MEAN) / PIXEL_STD
        if fmt == 'L':
            mix = torch.tensor([_LUMA])
        else:
            mix = torch.eye(3)[[2, 1, 0]] if fmt == 'BGR' else torch.eye(3)
        self.register_buffer('_mix', mix, persistent=False)  # [C_out, 3] over RGB 0-255
        self.register_buffer('_imnet_mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('_imnet_std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('_d2_mean', torch.tensor(self.pixel_mean).view(1, n_in, 1, 1), persistent=False)
        self.register_buffer('_d2_std', torch.tensor(self.pixel_std).view(1, n_in, 1, 1), persistent=False)

        constraints = dict(getattr(self.model, 'padding_constraints', {}) or {})
        self.size_divisibility = int(constraints.get('size_divisibility', 0) or self.model.size_divisibility or 0)
        self.square_size = int(constraints.get('square_size', 0) or 0)

        if weights:
            self.load_weights(weights, weights_prefix)
        cfg.freeze()
        self.cfg = cfg
        self.freeze_parts()

    # -- building ----------------------------------------------------------------------------------------------
    @staticmethod
    def _build(cfg):
        from detectron2.layers import ShapeSpec
        from detectron2.modeling import BACKBONE_REGISTRY, Backbone, build_backbone

        name = cfg.MODEL.BACKBONE.NAME
        if name not in BACKBONE_REGISTRY:
            raise KeyError(
                f"Detectron2Backbone: {name!r} is not in detectron2's BACKBONE_REGISTRY (registered: "
                f'{sorted(k for k, _ in BACKBONE_REGISTRY)}); import the module that registers it first'
            )
        model = build_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
        if not isinstance(model, Backbone):
            raise TypeError(f'Detectron2Backbone: {name} built a {type(model).__name__}, not a detectron2 Backbone')
        return model

    @staticmethod
    def _describe(shapes: Mapping[str, Tuple[int, int]]) -> str:
        return ', '.join(f'{k} ({c} channels, stride {s})' for k, (c, s) in shapes.items())

    @classmethod
    def output_shapes(
        cls, config_file: Optional[str] = None, opts=None, name: Optional[str] = None
    ) -> Dict[str, Dict[str, int]]:
        """``{feature: {'channels': c, 'stride': s}}`` of the backbone a config builds (random init; for
        choosing ``feat_dim`` / ``downsampler_kernel`` / ``num_stages`` of the trainer)."""
        extra = ['MODEL.BACKBONE.NAME', str(name)] if name is not None else []
        model = cls._build(build_detectron2_cfg(config_file, _flatten_opts(opts) + extra))
        return OrderedDict(
            (k, dict(channels=int(v.channels), stride=int(v.stride))) for k, v in model.output_shape().items()
        )

    # -- weights -----------------------------------------------------------------------------------------------
    def load_weights(self, weights: str, prefix: Optional[str] = None) -> None:
        """Loads the backbone's weights (see the class doc); raises if any parameter/buffer is missing or
        mis-shaped."""
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.utils.file_io import PathManager

        path = PathManager.get_local_path(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'Detectron2Backbone: weights {weights!r} do not exist')
        checkpointer = DetectionCheckpointer(self.model)
        if path.endswith('.pkl'):  # detectron2 / caffe2 pickles (model zoo ImageNet weights)
            data = checkpointer._load_file(path)
        else:
            data = {'model': read_state_dict(path)}  # the project's reader: safetensors or torch.save files
        sd = data['model']
        own = list(self.model.state_dict())
        heuristics = bool(data.get('matching_heuristics', False))
        if prefix is None and not heuristics:
            # the prefix under which most of the backbone's keys are (all of them, for a fitting file)
            prefix = max(_PREFIXES, key=lambda p: sum(p + k in sd for k in own))
        if prefix:
            sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
            if not sd:
                raise KeyError(f'Detectron2Backbone: no key of {weights!r} starts with {prefix!r}')
        data = dict(data, model=dict(sd))
        incompatible = checkpointer._load_model(data)
        missing = list(incompatible.missing_keys)
        shapes = [f'{k}: file {tuple(a)} vs model {tuple(b)}' for k, a, b in incompatible.incorrect_shapes]
        if missing or shapes:
            raise RuntimeError(
                f'Detectron2Backbone: {weights!r} does not fit {self.cfg_name}'
                f' (prefix {prefix!r}): missing {missing[:8]} ({len(missing)} in all), wrong shapes '
                f'{shapes[:5]}; the file has keys like {list(sd)[:4]}'
            )

    @property
    def cfg_name(self) -> str:
        return type(self.model).__name__

    # -- frozen ------------------------------------------------------------------------------------------------
    def frozen_parts(self):
        return (self.model,)

    # -- forward -----------------------------------------------------------------------------------------------
    def to_detectron2_input(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised RGB ``[B, 3, H, W]`` -> the normalised batch a detectron2 backbone receives
        (``INPUT.FORMAT`` channels, ``(x - PIXEL_MEAN) / PIXEL_STD``), not padded."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                'Detectron2Backbone expects ImageNet-normalised RGB [B, 3, H, W], got '
                f'{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}'
            )
        dt = x.dtype
        rgb255 = (x * self._imnet_std.to(dt) + self._imnet_mean.to(dt)) * 255.0
        img = torch.einsum('oc,bchw->bohw', self._mix.to(dt), rgb255)
        return (img - self._d2_mean.to(dt)) / self._d2_std.to(dt)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pads (bottom/right, i.e. with the mean colour, as detectron2's ``ImageList``) to the backbone's
        ``size_divisibility`` / ``square_size``."""
        h, w = int(x.shape[-2]), int(x.shape[-1])
        ph, pw = h, w
        if self.size_divisibility > 1:
            d = self.size_divisibility
            ph, pw = -(-h // d) * d, -(-w // d) * d
        if self.square_size > 0:
            if max(ph, pw) > self.square_size:
                raise ValueError(
                    f'Detectron2Backbone: {self.cfg_name} pads to a {self.square_size}x'
                    f'{self.square_size} square (padding_constraints square_size), the input is '
                    f'{h}x{w}: use images no larger than that'
                )
            ph = pw = self.square_size
        if (ph, pw) == (h, w):
            return x
        return F.pad(x, (0, pw - w, 0, ph - h), value=0.0)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, out_channels, ceil(H / out_stride), ceil(W / out_stride)]`` (when the backbone pads; else the
        backbone's own size) for ImageNet-normalised RGB ``x``."""
        h, w = int(x.shape[-2]), int(x.shape[-1])
        inp = self.to_detectron2_input(x)
        padded = self.pad(inp)
        out = self.model(padded)
        if not isinstance(out, Mapping) or self.out_feature not in out:
            raise KeyError(
                f'Detectron2Backbone: {self.cfg_name} returned '
                f'{sorted(out) if isinstance(out, Mapping) else type(out).__name__}, not '
                f'{self.out_feature!r}'
            )
        feat = out[self.out_feature]
        if padded.shape[-2:] != inp.shape[-2:]:
            s = self.out_stride
            oh, ow = -(-h // s), -(-w // s)
            if feat.shape[-2] < oh or feat.shape[-1] < ow:
                raise RuntimeError(
                    f'Detectron2Backbone: {self.out_feature} of the padded '
                    f'{tuple(padded.shape[-2:])} input is {tuple(feat.shape[-2:])}, smaller than '
                    f'ceil(({h}, {w}) / stride {s}) = ({oh}, {ow})'
                )
            feat = feat[..., :oh, :ow]
        return feat

    def extra_repr(self) -> str:
        return (
            f'out_feature={self.out_feature!r}, out_channels={self.out_channels}, out_stride={self.out_stride}, '
            f'input_format={self.input_format!r}, pixel_mean={self.pixel_mean}, pixel_std={self.pixel_std}'
        )
