"""``backbone=dict(type='TimmViT', ...)``: a timm Vision Transformer (DINO, DINOv2, plain ViT) as an mmseg backbone.

The backbone returns the patch tokens of chosen transformer blocks as ``[B, C, ceil(H/p), ceil(W/p)]`` maps, for
any input size, so that the ``FeatUpJBU`` neck can upsample them::

    backbone=dict(type='TimmViT', model_name='vit_small_patch16_224.dino', pretrained=True, frozen=True),
    neck=dict(type='FeatUpJBU', in_channels=384, in_index=0, feature_strides=16, out_size=None, output_stride=4),
    decode_head=dict(type='FCNHead', in_channels=384, in_index=0, ...)
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

from mmengine.model import BaseModule
from mmseg.registry import MODELS

from ...featurizers.timm_vit import TimmViTFeatures


@MODELS.register_module()
class TimmViT(TimmViTFeatures, BaseModule):
    """A timm ``VisionTransformer`` whose patch tokens come out as feature maps, for the ``FeatUpJBU`` neck: the
    framework-free :class:`featup_plugin.featurizers.TimmViTFeatures` registered in mmseg, with mmengine's
    ``init_cfg``. State-dict keys are ``model.<timm key>``.

    Args: those of :class:`~featup_plugin.featurizers.TimmViTFeatures` (``model_name``, ``out_indices``,
    ``pretrained``, ``checkpoint_key``, ``norm``, ``frozen``, ``img_size``, ``model_kwargs``, and FeatUp's
    ``pos_embed_interp``, ``token_head``, ``last_block``; the key formats its weights may have; outputs and
    attributes), plus

        init_cfg: mmengine init config, e.g. ``dict(type='Pretrained', checkpoint='vit.pth')`` (loaded when the
            runner calls ``init_weights()``, after any ``pretrained`` weights), with ``prefix='backbone.'`` to take
            the backbone out of an mmseg segmentor checkpoint; it accepts the same key formats and logs (rather
            than raises for) missing parameters.

    ``norm=True`` (default) is FeatUp's choice: its DINO featurizer takes ``get_intermediate_feat(img,
    norm=True)`` and its DINOv2 featurizer ``x_norm_patchtokens``, i.e. last-block tokens after the final
    LayerNorm; the neck then applies its own ChannelNorm (``FeatUpJBU(channel_norm=True)``). Use ``strides`` for
    the neck's ``feature_strides``; ``frozen=True`` freezes the backbone as FeatUp's probes do. FeatUp's exact six
    featurizers (the backbones of its official checkpoints, incl. CLIP / MaskCLIP / ResNet-50) are
    ``FeatUpFeaturizerBackbone``.
    """

    def __init__(
        self,
        model_name: str = 'vit_small_patch16_224.dino',
        out_indices: Union[int, Sequence[int]] = (-1,),
        pretrained: Union[bool, str] = False,
        checkpoint_key: Optional[str] = None,
        norm: bool = True,
        frozen: bool = False,
        img_size: Union[None, int, Tuple[int, int]] = None,
        model_kwargs: Optional[dict] = None,
        pos_embed_interp: str = 'timm',
        token_head: bool = False,
        last_block: str = 'full',
        init_cfg=None,
    ):
        super().__init__(
            model_name,
            out_indices=out_indices,
            pretrained=pretrained,
            checkpoint_key=checkpoint_key,
            norm=norm,
            frozen=frozen,
            img_size=img_size,
            model_kwargs=model_kwargs,
            pos_embed_interp=pos_embed_interp,
            token_head=token_head,
            last_block=last_block,
            init_cfg=init_cfg,
        )
        # mmengine's BaseModule.init_weights calls init_weights() of children not marked initialised; timm's
        # VisionTransformer.init_weights re-initialises every weight, which would wipe the weights loaded here.
        # timm initialises the model when it builds it, so mark it as done.
        self.model.is_init = True

    @property
    def norm(self) -> bool:
        """Whether the final LayerNorm is applied (the ``norm`` argument)."""
        return self.final_norm
