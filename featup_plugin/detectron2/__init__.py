"""Detectron2 adapter: FeatUp's JBU upsampler as a backbone wrapper.

``import featup_plugin.detectron2`` (needs detectron2: ``bash tools/install_detectron2.sh``) registers

* ``FeatUpBackbone`` in ``BACKBONE_REGISTRY``: wraps ``MODEL.FEATUP.BASE_BACKBONE`` (any registered backbone)
  or ``MODEL.FEATUP.TIMM_MODEL`` and upsamples chosen feature(s) guided by the input image;
* ``build_featup_fpn_backbone``: FPN over it, for detectors;
* ``build_featup_featurizer_backbone``: one of FeatUp's six featurizers (``MODEL.FEATUP.FEATURIZER.NAME``), e.g.
  as ``MODEL.FEATUP.BASE_BACKBONE``;
* the generated dataset as ``featup_synth_train`` / ``featup_synth_val``.

``add_featup_config(cfg)`` adds the ``MODEL.FEATUP.*`` keys. ``import featup_plugin`` alone never imports
detectron2.
"""

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        f'featup_plugin.detectron2 needs detectron2; install it with: bash tools/install_detectron2.sh ({e})'
    ) from e

from .backbone import IMAGENET_MEAN, IMAGENET_STD, FeatUpBackbone, build_base_backbone, read_state_dict
from .config import add_featup_config
from .dataset import (
    DEFAULT_GENERATE,
    DEFAULT_ROOT,
    IGNORE_LABEL,
    load_featup_synthetic,
    register_default,
    register_featup_synthetic,
)
from .evaluation import SemSegEvaluator, load_sem_seg
from .featurizer_backbone import FeaturizerBackbone, build_featup_featurizer_backbone
from .fpn import FeatUpFPN, build_featup_fpn_backbone
from .timm_backbone import TimmBackbone

register_default()

__all__ = [
    'FeatUpBackbone',
    'TimmBackbone',
    'FeaturizerBackbone',
    'build_featup_featurizer_backbone',
    'FeatUpFPN',
    'build_featup_fpn_backbone',
    'build_base_backbone',
    'add_featup_config',
    'read_state_dict',
    'register_featup_synthetic',
    'load_featup_synthetic',
    'DEFAULT_ROOT',
    'DEFAULT_GENERATE',
    'IGNORE_LABEL',
    'IMAGENET_MEAN',
    'IMAGENET_STD',
    'SemSegEvaluator',
    'load_sem_seg',
]
