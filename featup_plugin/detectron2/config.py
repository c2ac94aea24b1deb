"""``add_featup_config(cfg)``: the ``MODEL.FEATUP.*`` keys of :class:`~featup_plugin.detectron2.FeatUpBackbone`."""

from __future__ import annotations

from detectron2.config import CfgNode as CN

__all__ = ['add_featup_config']


def add_featup_config(cfg: CN) -> CN:
    """Adds ``MODEL.FEATUP`` to a detectron2 config (in place; also returned). Idempotent.

    Use with ``MODEL.BACKBONE.NAME: "FeatUpBackbone"`` (or ``"build_featup_fpn_backbone"`` for FPN-based
    detectors). Keys:

    * ``BASE_BACKBONE``: name of the wrapped backbone in ``BACKBONE_REGISTRY``, built from the same cfg (e.g.
      ``"build_resnet_backbone"`` with ``MODEL.RESNETS.*``). Used when ``TIMM_MODEL`` is empty.
    * ``TIMM_MODEL``: a timm model name instead (e.g. ``"vit_small_patch16_224"``), built with
      ``features_only=True``; ``TIMM_OUT_INDICES`` (timm's ``out_indices``, default ``[-1]``),
      ``TIMM_OUT_NAMES`` (feature names; default: timm's module names with dots as underscores, e.g.
      ``blocks_11``, ``layer4``), ``TIMM_PRETRAINED`` (a local checkpoint file; empty: random init),
      ``TIMM_KWARGS`` (extra ``timm.create_model`` arguments, e.g. ``{depth: 6}``).
    * ``FEATURIZER.NAME`` (``''``: unused), ``FEATURIZER.PRETRAINED``, ``FEATURIZER.WEIGHTS``, ``FEATURIZER.OUT_NAME``:
      one of FeatUp's six featurizers (``vit``, ``dino16``, ``dinov2``, ``clip``, ``maskclip``, ``resnet50``) as
      the backbone ``build_featup_featurizer_backbone`` (set it as ``BASE_BACKBONE``), so that FeatUp's official
      upsampler weights (``WEIGHTS``) meet the features they were trained on; ``PRETRAINED`` downloads the
      backbone's weights (timm / torch.hub), ``WEIGHTS`` a local backbone file instead.
    * ``IN_FEATURES``: base feature(s) to upsample (default ``[]``: the coarsest one).
    * ``MODE``: ``"replace"`` (the upsampled map keeps the base feature's name, with the new stride) or
      ``"append"`` (added as ``OUT_NAMES``, default ``"featup"`` for one feature, ``"featup_<name>"`` for more).
    * ``OUTPUT_STRIDE``: stride of the upsampled map(s) relative to the image (default 4). ``SCALE_FACTOR``
      (a float, > 0) is used instead when set: stride = base stride / SCALE_FACTOR, which must be an integer.
    * ``NUM_STAGES`` (0: the fewest x2 stages that reach the stride), ``RADIUS`` (3), ``KEY_DIM`` (32),
      ``CHANNEL_NORM`` (LayerNorm over channels before upsampling, as FeatUp; True).
    * ``WEIGHTS``: upsampler weights (a ``JBUStack`` state dict, ``torch.save``'d or ``.safetensors``),
      ``WEIGHTS_PREFIX``: key prefix to select and strip (e.g. ``"upsampler."`` for FeatUp checkpoints).
    * ``FREEZE_UPSAMPLER``, ``FREEZE_BASE``: no gradients and eval mode for that part.

    The guidance image is recovered from the normalised batch with ``MODEL.PIXEL_MEAN/PIXEL_STD`` and
    ``INPUT.FORMAT``.
    """
    if 'FEATUP' in cfg.MODEL:
        return cfg
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    f = cfg.MODEL.FEATUP = CN()
    f.BASE_BACKBONE = 'build_resnet_backbone'
    f.TIMM_MODEL = ''
    f.TIMM_OUT_INDICES = [-1]
    f.TIMM_OUT_NAMES = []
    f.TIMM_PRETRAINED = ''
    f.TIMM_KWARGS = CN(new_allowed=True)
    f.FEATURIZER = CN()
    f.FEATURIZER.NAME = ''
    f.FEATURIZER.PRETRAINED = False
    f.FEATURIZER.WEIGHTS = ''
    f.FEATURIZER.OUT_NAME = ''
    f.IN_FEATURES = []
    f.MODE = 'replace'
    f.OUT_NAMES = []
    f.OUTPUT_STRIDE = 4
    f.SCALE_FACTOR = 0.0
    f.NUM_STAGES = 0
    f.RADIUS = 3
    f.KEY_DIM = 32
    f.CHANNEL_NORM = True
    f.WEIGHTS = ''
    f.WEIGHTS_PREFIX = ''
    f.FREEZE_UPSAMPLER = False
    f.FREEZE_BASE = False
    if was_frozen:
        cfg.freeze()
    return cfg
