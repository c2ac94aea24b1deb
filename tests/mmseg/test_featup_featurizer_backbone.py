"""FeatUpFeaturizerBackbone (FeatUp's featurizers as an mmseg backbone), TimmViT's FeatUp options, and the upsampler
trainer on FeatUp's features."""

import pytest
import torch

mmseg = pytest.importorskip('mmseg', reason='MMSegmentation is not installed')
timm = pytest.importorskip('timm', reason='timm is not installed')

from mmseg.registry import MODELS  # noqa: E402

from featup_plugin.featurizers import FeatUpFeaturizer  # noqa: E402
from featup_plugin.mmseg.backbones import FeatUpFeaturizerBackbone, TimmViT  # noqa: E402
from tests.featurizers.helpers import SMALL  # noqa: E402
from tests.helpers import assert_same_state, one_thread, perturb  # noqa: E402, F401
from tests.mmseg import helpers  # noqa: E402, F401  (registers the modules)

pytestmark = pytest.mark.usefixtures('one_thread')


def test_registered_backbone_outputs_and_weights(tmp_path):
    m = MODELS.build(dict(type='FeatUpFeaturizerBackbone', name='dinov2', model_kwargs=SMALL))
    assert isinstance(m, FeatUpFeaturizerBackbone) and m.out_channels == [384] and m.strides == [14]
    out = m(torch.randn(2, 3, 70, 84))
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == (2, 384, 5, 6)
    assert not any(p.requires_grad for p in m.parameters()) and not m.train().backbone.model.training
    # init_cfg loads a saved backbone and init_weights() leaves it (timm's init_weights would re-randomise)
    src = perturb(FeatUpFeaturizer('dinov2', model_kwargs=SMALL), seed=1, scale=0.02)
    torch.save({'state_dict': src.state_dict()}, tmp_path / 'backbone.pth')
    cfg = dict(
        type='FeatUpFeaturizerBackbone',
        name='dinov2',
        model_kwargs=SMALL,
        init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'backbone.pth')),
    )
    built = MODELS.build(cfg)
    built.init_weights()
    assert_same_state(built, src)
    plain = MODELS.build(dict(type='FeatUpFeaturizerBackbone', name='dinov2', model_kwargs=SMALL))
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    plain.init_weights()
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())


def test_timm_vit_takes_featup_options():
    m = TimmViT(
        'vit_base_patch16_clip_quickgelu_224.openai',
        token_head=True,
        last_block='value',
        pos_embed_interp='dino',
        model_kwargs=dict(embed_dim=64, depth=2, num_heads=2, num_classes=32),
    )
    assert (m.token_head, m.last_block, m.pos_embed_interp, m.out_channels) == (True, 'value', 'dino', [32])
    assert m(torch.randn(1, 3, 48, 64))[0].shape == (1, 32, 3, 4)


def test_jbu_trainer_on_a_featup_featurizer():
    trainer = MODELS.build(
        dict(
            type='FeatUpJBUTrainer',
            backbone=dict(type='FeatUpFeaturizerBackbone', name='dino16', model_kwargs=dict(depth=1)),
            feat_dim=384,
            in_index=0,
            num_stages=2,
            n_views=1,
        )
    )
    img = torch.randn(1, 3, 64, 64)
    lr = trainer.extract_lr(img)
    assert lr.shape == (1, 384, 4, 4)
    with pytest.raises(ValueError, match='feat_dim=512 but the backbone output'):
        MODELS.build(
            dict(
                type='FeatUpJBUTrainer',
                backbone=dict(type='FeatUpFeaturizerBackbone', name='dino16', model_kwargs=dict(depth=1)),
                feat_dim=512,
            )
        )
