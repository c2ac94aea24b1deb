"""``decode_head=dict(type='PacCRFHead', head=dict(type='FCNHead', ...), num_iters=5)``: any decode head's logits
refined by a PAC-CRF (mean-field with pixel-adaptive messages, trained end to end with the head).

Derivation / details: docs/pac.md#pac-crf
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from mmengine.model import BaseModule
from mmseg.models.utils import resize
from mmseg.registry import MODELS

from ...layers.pac_crf import DEFAULT_CRF_KERNELS, PacCRF
from ...upsamplers.guidance import IMAGENET_MEAN, IMAGENET_STD
from ..guided import GuidedModuleMixin, missing_guidance_message
from ..segmentors.guided_encoder_decoder import _takes_guidance

MISSING_GUIDANCE = missing_guidance_message('PacCRFHead', 'decode head')
RESOLUTIONS = ('image', 'logits')


@MODELS.register_module()
class PacCRFHead(GuidedModuleMixin, BaseModule):
    """Wraps a decode head: ``logits = head(inputs)``, then :class:`~featup_plugin.layers.pac_crf.PacCRF` refines
    them, guided by the input image; losses and predictions are the wrapped head's (``loss_by_feat`` /
    ``predict_by_feat``) on the refined logits, so its ``loss_decode``, ``ignore_index`` and sampler apply.

    Needs ``model = dict(type='GuidedEncoderDecoder')`` (the image of each crop, also in slide inference), unless
    every kernel is ``'xy'`` and ``resolution='logits'``.

    Args:
        head: the decode head config (any mmseg head with ``num_classes >= 2`` softmax outputs; a guided head such
            as ``SFTGuidedHead`` gets the guidance too).
        num_iters, kernels, compat, update: as ``PacCRF`` (default kernels: ``DEFAULT_CRF_KERNELS``, two
            position + colour Gaussians; ``update='parallel'``, the paper's).
        resolution: ``'image'`` (default): the logits are bilinearly resized to the input (crop) size first and
            the CRF runs there, as the paper runs it on FCN-8s' full-resolution output (memory
            ``~ num_iters * num_classes * H * W`` per image in training); ``'logits'``: at the head's output
            stride, guidance resized down (cheaper, coarser).
        init_cfg: as ``BaseModule`` (the wrapped head keeps its own ``init_cfg``).

    A segmentor checkpoint of the plain head loads into the wrapped one (``load_from``: its head keys are mapped
    under ``head.``; the CRF starts from its initialisation), so a trained model can be fine-tuned with the CRF.
    """

    def __init__(
        self,
        head: dict,
        num_iters: int = 5,
        kernels: Optional[Sequence[dict]] = None,
        compat: str = 'potts',
        update: str = 'parallel',
        resolution: str = 'image',
        init_cfg=None,
    ):
        super().__init__(init_cfg=init_cfg)
        if not isinstance(head, dict):
            raise TypeError(f'PacCRFHead: head must be a decode head config dict, got {type(head).__name__}')
        if resolution not in RESOLUTIONS:
            raise ValueError(f'PacCRFHead: resolution must be one of {RESOLUTIONS}, got {resolution!r}')
        self.head = MODELS.build(head)
        if getattr(self.head, 'out_channels', 0) < 2:
            raise ValueError(
                'PacCRFHead: the CRF works on a softmax over num_classes >= 2 logits; the wrapped head has '
                f'out_channels={getattr(self.head, "out_channels", None)} (use_sigmoid heads are not supported)'
            )
        if getattr(self.head, 'prior_head', None) is not None and getattr(self.head, 'prior_loss_weight', 0) > 0:
            raise ValueError(
                "PacCRFHead: the wrapped head's own loss terms (SFTGuidedHead's loss_prior) would be lost; wrap it "
                'with prior_loss_weight=0 or use another condition'
            )
        self.resolution = resolution
        self._head_guided = _takes_guidance(self.head)
        self.crf = PacCRF(
            self.head.out_channels,
            num_iters,
            DEFAULT_CRF_KERNELS if kernels is None else kernels,
            compat=compat,
            update=update,
        )
        self._register_load_state_dict_pre_hook(self._plain_head_keys)

    @staticmethod
    def _plain_head_keys(state_dict, prefix, *args) -> None:
        """A checkpoint of the plain (unwrapped) head loads: its ``decode_head.conv_seg.*`` etc. become
        ``decode_head.head.*`` (the CRF's parameters are then missing and keep their initial values)."""
        ours = (prefix + 'head.', prefix + 'crf.')
        for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(ours)]:
            state_dict[prefix + 'head.' + key[len(prefix) :]] = state_dict.pop(key)

    # -- what EncoderDecoder and mmseg's tools read from a decode head ------------------------------------
    @property
    def align_corners(self):
        return self.head.align_corners

    @property
    def num_classes(self):
        return self.head.num_classes

    @property
    def out_channels(self):
        return self.head.out_channels

    @property
    def threshold(self):
        return self.head.threshold

    @property
    def ignore_index(self):
        return self.head.ignore_index

    def set_data_normalization(self, mean, std, bgr) -> None:
        super().set_data_normalization(mean, std, bgr)
        if hasattr(self.head, 'set_data_normalization'):
            self.head.set_data_normalization(mean, std, bgr)

    # -- forward ------------------------------------------------------------------------------------------
    def forward(self, inputs, guidance: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Refined logits: at the input size (``resolution='image'``) or the head's output size."""
        if guidance is None:
            guidance = getattr(inputs, 'guidance', None)
        logits = self.head(inputs, guidance=guidance) if self._head_guided else self.head(inputs)
        if guidance is None:
            if self.crf.needs_guidance or self.resolution == 'image':
                raise RuntimeError(MISSING_GUIDANCE)
            return self.crf(logits)
        image = self.guidance_from_inputs(guidance)  # ImageNet-normalised RGB
        rgb = image * image.new_tensor(IMAGENET_STD).view(1, 3, 1, 1) + image.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        if image.shape[0] != logits.shape[0]:
            raise ValueError(f'PacCRFHead: guidance batch {image.shape[0]} != logits batch {logits.shape[0]}')
        if self.resolution == 'image' and tuple(logits.shape[-2:]) != tuple(rgb.shape[-2:]):
            logits = resize(logits, size=rgb.shape[-2:], mode='bilinear', align_corners=self.align_corners)
        return self.crf(logits, rgb.to(logits.dtype))

    def loss(self, inputs, batch_data_samples, train_cfg) -> dict:
        """The wrapped head's ``loss_by_feat`` on the refined logits."""
        return self.head.loss_by_feat(self.forward(inputs), batch_data_samples)

    def predict(self, inputs, batch_img_metas, test_cfg) -> torch.Tensor:
        """The wrapped head's ``predict_by_feat`` (resize to the input size) on the refined logits."""
        return self.head.predict_by_feat(self.forward(inputs), batch_img_metas)
