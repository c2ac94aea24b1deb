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

    Args:
        model_name: timm model name, with an optional pretrained tag: ``'vit_small_patch16_224.dino'`` (DINO
            ViT-S/16, what FeatUp's ``dino16`` upsampler was trained on), ``'vit_small_patch14_dinov2.lvd142m'``
            (DINOv2), ``'vit_small_patch14_reg4_dinov2.lvd142m'``, ``'vit_small_patch16_224'``, ... Any timm model
            built on ``timm.models.vision_transformer.VisionTransformer`` with a plain patch embedding works;
            ``timm.list_models('vit_*')`` lists the names.
        out_indices: transformer blocks whose outputs are returned, in this order (negative: from the end;
            ``-1`` = last block). Blocks after the last one asked for are removed, as are the classifier head
            (and ``fc_norm`` / attention pooling), so every parameter receives a gradient.
        pretrained: ``True`` loads timm's hub weights for ``model_name`` (needs the network or timm's cache);
            a path (``str``) loads a local checkpoint (see "Weights" below); ``False``: random init.
        checkpoint_key: entry of a local checkpoint that holds the weights (e.g. ``'teacher'`` for DINO's full
            training checkpoints). Default: ``'state_dict'``, else ``'model'``, else ``'teacher'``, else the file
            itself.
        norm: apply the ViT's final ``norm`` layer (its LayerNorm after the last block) to every returned map,
            as FeatUp does: its DINO featurizer takes ``get_intermediate_feat(img, norm=True)`` and its DINOv2
            featurizer takes ``x_norm_patchtokens``, i.e. last-block tokens after the final LayerNorm (the
            upsampler then applies its own ChannelNorm: ``FeatUpJBU(channel_norm=True)``). ``False`` returns raw
            block outputs and removes the final norm. Models that pool with ``fc_norm`` have an identity ``norm``.
        frozen: eval mode and ``requires_grad=False`` for the whole ViT, kept across ``.train()`` (FeatUp's
            linear-probe protocol trains on top of a frozen backbone).
        img_size: the size the positional embedding is built for (timm's ``img_size``; default: the model's, e.g.
            224, or 518 for DINOv2). Inputs of any other size use a bicubically resampled embedding.
        model_kwargs: extra ``timm.create_model`` arguments, e.g. ``dict(drop_path_rate=0.1)`` or ``dict(depth=2)``.
            ``dynamic_img_size`` and ``dynamic_img_pad`` default to True here (any input size); ``num_classes``
            is 0.
        init_cfg: mmengine init config, e.g. ``dict(type='Pretrained', checkpoint='vit.pth')`` (loaded when the
            runner calls ``init_weights()``, after any ``pretrained`` weights), with ``prefix='backbone.'`` to take
            the backbone out of an mmseg segmentor checkpoint.

    Weights (``pretrained='path'``, ``init_cfg`` and ``load_state_dict`` all accept these key formats):
        * this module's own keys: ``model.<timm key>`` (e.g. ``model.blocks.0.attn.qkv.weight``), as saved by
          ``torch.save(backbone.state_dict())``, or ``backbone.model.<timm key>`` in a segmentor checkpoint;
        * a bare timm model's keys: ``<timm key>`` (``cls_token``, ``pos_embed``, ``patch_embed.proj.weight``,
          ``blocks.0.norm1.weight``, ..., ``norm.weight``), as saved by ``torch.save(timm_model.state_dict())``, in
          timm's hub files (``.safetensors`` too), and in the original DINO / DINOv2 releases (converted by timm's
          ``checkpoint_filter_fn``: DINOv2's ``mask_token`` dropped, register tokens moved).
        A ``module.`` prefix is stripped; if some keys start with ``backbone.``, only those are used (segmentor
        and DINO ``teacher`` checkpoints). ``pos_embed`` is resampled to the model's grid and the patch
        embedding to its patch size when they differ. Keys of the parts removed here (classifier head,
        ``fc_norm``, blocks after the last of ``out_indices``, ``norm`` when ``norm=False``) are ignored.
        ``pretrained='path'`` raises if a parameter is missing from the file; ``init_cfg`` (mmengine) logs it.

    Outputs: a tuple of ``[B, embed_dim, ceil(H/p), ceil(W/p)]`` maps (patch tokens only: the class and register
    tokens, ``num_prefix_tokens`` of them, are dropped). Inputs whose size is not a multiple of the patch size
    are zero-padded at the bottom/right (timm's ``dynamic_img_pad``), so the last row/column of tokens partly
    covers padding.

    Attributes:
        out_channels (list[int]), patch_size (int), strides (list[int], the patch size per output): use
        ``strides`` for the neck's ``feature_strides``.
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
