"""featup_plugin.featurizers.TimmViTFeatures (and TimmFeaturizer), without any framework."""

import subprocess
import sys

import pytest
import torch

timm = pytest.importorskip('timm', reason='timm is not installed')

from timm.models.vision_transformer import checkpoint_filter_fn  # noqa: E402

from featup_plugin.checkpoint import NotACheckpointError  # noqa: E402
from featup_plugin.featurizers import TimmFeaturizer, TimmViTFeatures, is_plain_vit  # noqa: E402
from featup_plugin.upsamplers import ChannelNorm  # noqa: E402
from tests.featurizers.helpers import SMALL, bare_timm, tokens_to_map  # noqa: E402
from tests.helpers import assert_same_state as assert_same  # noqa: E402
from tests.helpers import perturb as perturbed  # noqa: E402

P16 = 'vit_small_patch16_224'
P14 = 'vit_small_patch14_dinov2'
P14_REG = 'vit_small_patch14_reg4_dinov2'


@pytest.mark.parametrize('name, patch, prefix', [(P16, 16, 1), (P14, 14, 1), (P14_REG, 14, 5)])
def test_shapes_and_attributes(name, patch, prefix):
    m = TimmViTFeatures(name, out_indices=(0, -1), model_kwargs=SMALL).eval()
    assert (m.patch_size, m.embed_dim, m.num_prefix_tokens, m.in_channels) == (patch, 384, prefix, 3)
    assert m.out_indices == (0, 1) and m.out_channels == [384, 384] and m.strides == [patch, patch]
    for h, w in [(64, 64), (70, 50), (patch, 3 * patch), (17, 33)]:
        out = m(torch.randn(2, 3, h, w))
        assert isinstance(out, tuple) and len(out) == 2
        assert all(tuple(o.shape) == (2, 384, -(-h // patch), -(-w // patch)) for o in out), (h, w)


@pytest.mark.parametrize('name, hw', [(P16, (64, 96)), (P14_REG, (70, 56))])
def test_equals_timm_forward_features(name, hw):
    ref = bare_timm(name, seed=1, img_size=hw)
    m = TimmViTFeatures(name, model_kwargs=SMALL, img_size=hw).eval()
    m.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        want = tokens_to_map(
            ref.forward_features(x), ref.num_prefix_tokens, hw[0] // m.patch_size, hw[1] // m.patch_size
        )
        torch.testing.assert_close(m(x)[0], want, rtol=1e-5, atol=1e-5)
    raw = TimmViTFeatures(name, model_kwargs=SMALL, img_size=hw, norm=False).eval()
    raw.load_state_dict(ref.state_dict())  # norm.* ignored: removed
    assert isinstance(raw.model.norm, torch.nn.Identity) and not raw.final_norm
    with torch.no_grad():
        r = raw(x)[0]
    torch.testing.assert_close(ref.norm(r.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), want, rtol=1e-5, atol=1e-5)


def test_pruning_and_pos_embed_resampling():
    m = TimmViTFeatures(P16, out_indices=1, model_kwargs=dict(depth=4))
    assert len(m.model.blocks) == 2 and isinstance(m.model.head, torch.nn.Identity)
    src = bare_timm(P16, seed=2)
    fixed = bare_timm(P16, seed=3, img_size=(64, 96))
    fixed.load_state_dict(checkpoint_filter_fn(src.state_dict(), fixed))
    m = TimmViTFeatures(P16, model_kwargs=SMALL).eval()
    m.load_state_dict(src.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], tokens_to_map(fixed.forward_features(x), 1, 4, 6), rtol=1e-5, atol=1e-5)


def test_key_formats(tmp_path):
    src = perturbed(TimmViTFeatures(P16, model_kwargs=SMALL), seed=5)
    bare = {k[len('model.') :]: v for k, v in src.state_dict().items()}
    head = timm.create_model(P16, pretrained=False, num_classes=10, **SMALL).state_dict()
    with_head = {**bare, 'head.weight': head['head.weight'], 'head.bias': head['head.bias']}
    from safetensors.torch import save_file

    save_file(bare, str(tmp_path / 'bare.safetensors'))
    variants = {
        'own.pth': src.state_dict(),
        'bare.pth': bare,
        'head.pth': with_head,
        'ddp.pth': {'module.' + k: v for k, v in bare.items()},
        'segmentor.pth': dict(state_dict={'backbone.' + k: v for k, v in src.state_dict().items()}, meta={}),
        'd2.pth': dict(model={'backbone.' + k: v for k, v in bare.items()}),
        'dino.pth': dict(teacher={'backbone.' + k: v for k, v in bare.items()}, student={}),
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
    for name in list(variants) + ['bare.safetensors']:
        assert_same(TimmViTFeatures(P16, model_kwargs=SMALL, pretrained=str(tmp_path / name)), src)
    other = perturbed(TimmViTFeatures(P16, model_kwargs=SMALL), seed=6)
    torch.save(dict(a=other.state_dict(), b={}), tmp_path / 'keyed.pth')
    assert_same(
        TimmViTFeatures(P16, model_kwargs=SMALL, pretrained=str(tmp_path / 'keyed.pth'), checkpoint_key='a'), other
    )
    with pytest.raises(ValueError, match="checkpoint_key 'c' is not in"):
        TimmViTFeatures(P16, model_kwargs=SMALL, pretrained=str(tmp_path / 'keyed.pth'), checkpoint_key='c')
    # DINOv2's original release: mask_token dropped by timm's filter; pos_embed resampled to another img_size
    d2v = perturbed(TimmViTFeatures(P14, model_kwargs=SMALL), seed=7)
    sd = {k[len('model.') :]: v for k, v in d2v.state_dict().items()}
    sd['mask_token'] = torch.zeros(1, 384)
    torch.save(sd, tmp_path / 'dinov2.pth')
    assert_same(TimmViTFeatures(P14, model_kwargs=SMALL, pretrained=str(tmp_path / 'dinov2.pth')), d2v)
    small = TimmViTFeatures(P14, model_kwargs=SMALL, img_size=224, pretrained=str(tmp_path / 'dinov2.pth'))
    assert small.model.pos_embed.shape == (1, 1 + 16 * 16, 384)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match=r"TimmViTFeatures: timm has no model.*timm.list_models\('vit_\*'\)"):
        TimmViTFeatures('vit_smal_patch16_224')
    with pytest.raises(ValueError, match='not a timm VisionTransformer'):
        TimmViTFeatures('resnet18')
    with pytest.raises(ValueError, match='hybrid'):
        TimmViTFeatures('vit_small_r26_s32_224', model_kwargs=SMALL)
    with pytest.raises(ValueError, match='out of range'):
        TimmViTFeatures(P16, out_indices=(2,), model_kwargs=SMALL)
    with pytest.raises(ValueError, match='out_indices is empty'):
        TimmViTFeatures(P16, out_indices=(), model_kwargs=SMALL)
    with pytest.raises(TypeError, match='pretrained'):
        TimmViTFeatures(P16, pretrained=1, model_kwargs=SMALL)
    with pytest.raises(FileNotFoundError, match='absent.pth'):
        TimmViTFeatures(P16, pretrained=str(tmp_path / 'absent.pth'), model_kwargs=SMALL)
    (tmp_path / 'notes.pth').write_text('not weights')
    with pytest.raises(NotACheckpointError, match=r'notes\.pth is not a PyTorch or safetensors checkpoint'):
        TimmViTFeatures(P16, pretrained=str(tmp_path / 'notes.pth'), model_kwargs=SMALL)
    torch.save(TimmViTFeatures(P16, model_kwargs=dict(depth=1)).state_dict(), tmp_path / 'depth1.pth')
    with pytest.raises(RuntimeError, match='missing'):
        TimmViTFeatures(P16, pretrained=str(tmp_path / 'depth1.pth'), model_kwargs=SMALL)
    m = TimmViTFeatures(P16, model_kwargs=SMALL)
    with pytest.raises(ValueError, match=r'\[B, 3, H, W\]'):
        m(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r'\[B, 3, H, W\]'):
        m(torch.randn(1, 1, 32, 32))
    assert is_plain_vit(P16) and not is_plain_vit('resnet18') and not is_plain_vit('no_such_model')


def test_frozen_stays_frozen():
    m = TimmViTFeatures(P14, model_kwargs=dict(SMALL, drop_path_rate=0.5), frozen=True)
    m.train()
    assert m.training and not any(mod.training for mod in m.model.modules())
    assert not any(p.requires_grad for p in m.parameters())
    trainable = TimmViTFeatures(P16, model_kwargs=SMALL).train()
    trainable(torch.randn(1, 3, 32, 48))[0].square().mean().backward()
    assert all(p.grad is not None for p in trainable.parameters())


def test_timm_featurizer_keeps_its_keys_and_outputs(tmp_path):
    f = TimmFeaturizer(P16, depth=2)
    keys = list(f.state_dict())
    assert all(k.startswith(('model.', 'norm.')) for k in keys) and 'norm.norm.weight' in keys
    assert not f.model.training and not any(p.requires_grad for p in f.parameters())
    f.train()
    assert not f.model.training and not f.norm.training
    ref = bare_timm(P16, seed=8, dynamic_img_size=True)
    path = tmp_path / 'trainer.pth'  # the upsampler training's checkpoint: the ViT under backbone.model.
    torch.save(
        dict(
            state_dict={
                **{f'backbone.model.{k}': v for k, v in ref.state_dict().items()},
                'upsampler.up1.range_temp': torch.zeros(()),
            }
        ),
        path,
    )
    f = TimmFeaturizer(P16, weights=str(path), depth=2)
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        want = ChannelNorm(384)(tokens_to_map(ref.forward_features(x), 1, 3, 4))
    torch.testing.assert_close(f(x), want, rtol=1e-5, atol=1e-5)


def test_imports_no_framework():
    code = (
        'import sys, importlib.abc\n'
        'class B(importlib.abc.MetaPathFinder):\n'
        '    def find_spec(self, name, path=None, target=None):\n'
        '        if name.split(".")[0] in ("mmseg", "mmcv", "mmengine", "mmdet", "detectron2"):\n'
        '            raise ImportError(name)\n'
        'sys.meta_path.insert(0, B())\n'
        'import torch\n'
        'from featup_plugin.featurizers import TimmViTFeatures\n'
        'm = TimmViTFeatures("vit_small_patch16_224", model_kwargs=dict(depth=1))\n'
        'assert m(torch.randn(1, 3, 32, 32))[0].shape == (1, 384, 2, 2)\n'
    )
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
