"""``model=dict(type='FeatUpJBUTrainer', ...)``: FeatUp's multi-view training of a JBU upsampler on a frozen
backbone, as an mmengine model trained by mmengine's Runner (``tools/train.py``); checkpoints hold the stack under
``upsampler.*`` and a resumed run continues with exactly the random draws of an uninterrupted one.

Derivation / details: docs/training.md#featupjbutrainer
"""

from __future__ import annotations

from typing import Dict, Optional, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmseg.registry import MODELS

from ...layers.freeze import FrozenPartsMixin
from ...training import UncertaintyHead
from ...training.multiview import CRF_GUIDANCE, check_loss_weight, multiview_loss
from ...upsamplers import ChannelNorm, JBUStack, build_downsampler


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (int(seed) * 1_000_003 + int(step) * 7919 + int(rank) * 104_729) % (2**62)


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


@MODELS.register_module()
class FeatUpJBUTrainer(FrozenPartsMixin, BaseModel):
    """Trains a :class:`~featup_plugin.upsamplers.JBUStack` on a frozen backbone (FeatUp's JBU training).

    Args:
        backbone: config of the frozen backbone in mmseg's ``MODELS`` (``TimmViT``, ``ResNetV1c``,
            ``Detectron2Backbone`` for any detectron2 backbone, ...), or an ``nn.Module``. Its output may be a
            tensor, a tuple/list or a dict.
        feat_dim: channels of the upsampled feature (checked at build time against the backbone's
            ``out_channels`` where it has one).
        in_index: which output of the backbone (an index for tuples/lists, a key for dicts).
        num_stages, radius, key_dim: the stack (FeatUp: 4, 3, 32).
        downsampler: ``'attention'`` (FeatUp's default) or ``'blur'``; ``downsampler_kernel``: its window
            (FeatUp: 16 for stride-16 backbones at 224 px; the backbone's stride is a good choice);
            ``downsampler_cfg``: more options of the attention downsampler (FeatUp: ``dropout=0.2``,
            ``logit_dropout=0.2``, ``blur_attn=True``).
        n_views, max_pad, max_zoom: the jitter (FeatUp: 5 views, 20 px, 2.0).
        proj_dim: random projection width, one matrix per image and view (FeatUp: 30; 0 or None: none).
        crf_weight: weight of the sampled CRF loss on the first view (FeatUp: 0.001); ``crf_guidance``:
            ``'image'`` (FeatUp's code, the default: the un-jittered image, misaligned with the view's features) or
            ``'view'`` (the jittered image, aligned; recommended: docs/training.md#multi-view-loss);
            ``crf_samples``: pixels sampled (FeatUp: 1000).
        tv_weight: weight of the TV of ``|P t(F_hr)|^2`` on the first view (FeatUp: 0 for the JBU).
        filter_ent_weight: weight of the (subtracted) downsampler kernel entropy, per view (FeatUp: 0; blur
            downsampler only).
        upsample_per_view: run the upsampler once per view (FeatUp) or once per step (same expectation, cheaper;
            :func:`~featup_plugin.training.multiview_loss`).
        uncertainty: the adaptive-uncertainty loss (FeatUp's ``outlier_detection``: True) or plain MSE;
            ``scale_init_gain`` / ``min_scale``: its head's init gain and clamp (FeatUp: 0.1, 1e-4).
        channel_norm: LayerNorm over channels on the backbone features (FeatUp's ``use_norm``; frozen identity).
        seed: base of the per-step seeds.

    FeatUp clips the gradient norm to 1e-4 for the first 10 steps: ``EarlyGradClipHook`` (in the configs'
    ``custom_hooks``).
    """

    def __init__(
        self,
        backbone: Union[dict, nn.Module],
        feat_dim: int,
        in_index: Union[int, str] = -1,
        num_stages: int = 4,
        radius: int = 3,
        key_dim: int = 32,
        downsampler: str = 'attention',
        downsampler_kernel: int = 16,
        downsampler_cfg: Optional[dict] = None,
        n_views: int = 5,
        max_pad: int = 20,
        max_zoom: float = 2.0,
        proj_dim: Optional[int] = 30,
        crf_weight: float = 0.001,
        crf_guidance: str = 'image',
        crf_samples: int = 1000,
        tv_weight: float = 0.0,
        filter_ent_weight: float = 0.0,
        upsample_per_view: bool = True,
        uncertainty: bool = True,
        scale_init_gain: float = 0.1,
        min_scale: float = 1e-4,
        channel_norm: bool = True,
        seed: int = 0,
        data_preprocessor: Optional[dict] = None,
        init_cfg=None,
    ):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if n_views < 1:
            raise ValueError(f'n_views must be >= 1, got {n_views}')
        if max_pad < 0 or max_zoom < 1:
            raise ValueError(f'need max_pad >= 0 and max_zoom >= 1, got {max_pad}, {max_zoom}')
        for name, value in (
            ('crf_weight', crf_weight),
            ('tv_weight', tv_weight),
            ('filter_ent_weight', filter_ent_weight),
        ):
            check_loss_weight(name, value)
        if crf_guidance not in CRF_GUIDANCE:
            raise ValueError(f'crf_guidance must be one of {CRF_GUIDANCE}, got {crf_guidance!r}')
        if crf_samples < 1:
            raise ValueError(f'crf_samples must be >= 1, got {crf_samples}')
        if filter_ent_weight > 0 and downsampler not in ('blur', 'simple'):
            raise ValueError(
                f"filter_ent_weight > 0 needs downsampler='blur' (the entropy of its one kernel), got {downsampler!r}"
            )
        self.backbone = MODELS.build(backbone) if isinstance(backbone, dict) else backbone
        if not isinstance(self.backbone, nn.Module):
            raise TypeError(f'backbone must be a config dict or an nn.Module, got {type(backbone).__name__}')
        self.feat_dim, self.in_index = int(feat_dim), in_index
        self._check_feat_dim()
        self.norm = ChannelNorm(self.feat_dim) if channel_norm else nn.Identity()
        self.upsampler = JBUStack(self.feat_dim, num_stages=num_stages, radius=radius, key_dim=key_dim)
        self.downsampler = build_downsampler(downsampler, self.feat_dim, downsampler_kernel, **(downsampler_cfg or {}))
        self.scale_net = (
            UncertaintyHead(self.feat_dim, init_gain=scale_init_gain, min_scale=min_scale) if uncertainty else None
        )
        self.n_views, self.max_pad, self.max_zoom = int(n_views), int(max_pad), float(max_zoom)
        self.proj_dim, self.tv_weight, self.seed = proj_dim, float(tv_weight), int(seed)
        self.crf_weight, self.crf_guidance, self.crf_samples = float(crf_weight), crf_guidance, int(crf_samples)
        self.filter_ent_weight, self.upsample_per_view = float(filter_ent_weight), bool(upsample_per_view)
        self.register_buffer('step', torch.zeros((), dtype=torch.long))
        self.freeze_parts()

    def _check_feat_dim(self) -> None:
        """Fails at build time when the backbone says what it returns (``out_channels``: an int, e.g.
        ``Detectron2Backbone``, or a list indexed by ``in_index``, e.g. ``TimmViT``) and it is not ``feat_dim``."""
        channels = getattr(self.backbone, 'out_channels', None)
        if isinstance(channels, (list, tuple)) and isinstance(self.in_index, int):
            try:
                channels = channels[self.in_index]
            except IndexError:
                raise ValueError(
                    f'in_index {self.in_index} is out of range: the backbone has {len(channels)} '
                    f'outputs (out_channels {list(channels)})'
                ) from None
        if isinstance(channels, int) and channels != self.feat_dim:
            what = getattr(self.backbone, 'out_feature', self.in_index)
            raise ValueError(
                f'feat_dim={self.feat_dim} but the backbone output {what!r} has {channels} channels '
                f'({type(self.backbone).__name__}); set feat_dim={channels}'
            )

    # -- frozen parts ------------------------------------------------------------------------------------------
    def frozen_parts(self):
        return (self.backbone, self.norm)

    def init_weights(self):
        super().init_weights()
        self.freeze_parts()

    # -- features ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def extract_lr(self, img: torch.Tensor) -> torch.Tensor:
        """Channel-normed low-resolution features of the frozen backbone, ``[B, feat_dim, h, w]``."""
        out = self.backbone(img)
        if isinstance(out, dict):
            if self.in_index not in out:
                raise KeyError(f'backbone output has keys {sorted(out)}, in_index is {self.in_index!r}')
            out = out[self.in_index]
        elif isinstance(out, (list, tuple)):
            out = out[self.in_index]
        if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[1] != self.feat_dim:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f'backbone output {self.in_index!r} must be [B, {self.feat_dim}, h, w] (feat_dim), got {shape}'
            )
        return self.norm(out)

    def upsample(self, img: torch.Tensor, lr: Optional[torch.Tensor] = None, output_size=None) -> torch.Tensor:
        """High-resolution features of ``img`` (default: at the image size)."""
        lr = self.extract_lr(img) if lr is None else lr
        return self.upsampler(lr, img, output_size=output_size or tuple(img.shape[-2:]))

    # -- mmengine interface ------------------------------------------------------------------------------------
    def forward(self, inputs: torch.Tensor, data_samples=None, mode: str = 'tensor'):
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4 or inputs.shape[1] != 3:
            raise ValueError(
                'FeatUpJBUTrainer expects inputs [B, 3, H, W] (ImageNet-normalised RGB), got '
                f'{tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__}'
            )
        if mode == 'loss':
            return self.loss(inputs)
        if mode in ('tensor', 'predict'):
            return self.upsample(inputs)
        raise ValueError(f"mode must be 'loss', 'tensor' or 'predict', got {mode!r}")

    def loss(self, img: torch.Tensor) -> Dict[str, torch.Tensor]:
        seed = _step_seed(self.seed, int(self.step), _rank())
        devices = (
            [img.device.index if img.device.index is not None else torch.cuda.current_device()]
            if img.device.type == 'cuda'
            else []
        )
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)  # dropout masks of this step
            gen = torch.Generator().manual_seed(seed)  # views and projections (drawn on the CPU)
            losses = self._loss(img, gen)
        if self.training:
            self.step += 1
        return losses

    def _loss(self, img: torch.Tensor, gen: torch.Generator) -> Dict[str, torch.Tensor]:
        return multiview_loss(
            img,
            self.extract_lr,
            lambda lr, im: self.upsample(im, lr),
            self.downsampler,
            self.scale_net,
            gen,
            n_views=self.n_views,
            max_pad=self.max_pad,
            max_zoom=self.max_zoom,
            proj_dim=self.proj_dim,
            tv_weight=self.tv_weight,
            crf_weight=self.crf_weight,
            filter_ent_weight=self.filter_ent_weight,
            upsample_per_view=self.upsample_per_view,
            crf_guidance=self.crf_guidance,
            crf_samples=self.crf_samples,
        )
