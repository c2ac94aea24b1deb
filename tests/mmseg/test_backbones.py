"""TimmViT backbone, and the FeatUpJBU neck behind transformer backbones (mmseg's ViT and MiT, timm ViTs)."""

import copy

import pytest
import torch
import torch.nn.functional as F

mmseg = pytest.importorskip('mmseg', reason='MMSegmentation is not installed')
timm = pytest.importorskip('timm', reason='timm is not installed')

from mmengine.config import ConfigDict  # noqa: E402
from mmengine.optim import OptimWrapper  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from timm.models.vision_transformer import checkpoint_filter_fn  # noqa: E402

from featup_plugin.mmseg.backbones import TimmViT  # noqa: E402
from tests.featurizers.helpers import SMALL, bare_timm, tokens_to_map  # noqa: E402
from tests.helpers import assert_same_state as assert_params_equal  # noqa: E402
from tests.helpers import perturb as perturbed  # noqa: E402
from tests.mmseg.helpers import batch, data_preprocessor, fcn_head  # noqa: E402  (registers the modules)

P16 = 'vit_small_patch16_224'
P14 = 'vit_small_patch14_dinov2.lvd142m'
P14_REG = 'vit_small_patch14_reg4_dinov2'


# -- shapes and numerics -------------------------------------------------------------------------------------
@pytest.mark.parametrize('name, patch', [(P16, 16), (P14, 14), (P14_REG, 14)])
def test_output_shapes_any_input_size(name, patch):
    m = TimmViT(name, model_kwargs=SMALL).eval()
    assert m.patch_size == patch and m.strides == [patch] and m.out_channels == [384]
    for h, w in [(64, 64), (64, 96), (70, 50), (patch, 3 * patch), (17, 33)]:
        out = m(torch.randn(2, 3, h, w))
        assert isinstance(out, tuple) and len(out) == 1
        assert tuple(out[0].shape) == (2, 384, -(-h // patch), -(-w // patch)), (h, w)


@pytest.mark.parametrize('name, hw', [(P16, (64, 64)), (P16, (224, 224)), (P14_REG, (70, 56))])
def test_matches_timm_forward_features(name, hw):
    img_size = None if hw == (224, 224) else hw
    kw = {} if img_size is None else dict(img_size=img_size)
    ref = bare_timm(name, seed=1, **kw)
    m = TimmViT(name, model_kwargs=SMALL, img_size=img_size).eval()
    m.load_state_dict(ref.state_dict())  # bare timm keys
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        want = tokens_to_map(
            ref.forward_features(x), ref.num_prefix_tokens, hw[0] // m.patch_size, hw[1] // m.patch_size
        )
        got = m(x)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_positional_embedding_is_resampled_like_timm():
    # ours (built for 224) on 64x96 == a timm model built for 64x96 whose pos_embed timm resampled from 224
    src = bare_timm(P16, seed=2)
    fixed = bare_timm(P16, seed=3, img_size=(64, 96))
    fixed.load_state_dict(checkpoint_filter_fn(src.state_dict(), fixed))
    m = TimmViT(P16, model_kwargs=SMALL).eval()
    m.load_state_dict(src.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], tokens_to_map(fixed.forward_features(x), 1, 4, 6), rtol=1e-5, atol=1e-5)


def test_non_divisible_inputs_are_zero_padded_bottom_right():
    m = TimmViT(P14, model_kwargs=SMALL).eval()
    x = torch.randn(1, 3, 70, 50)
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], m(F.pad(x, (0, 6, 0, 0)))[0])  # 50 -> 56 = 4 * 14


def test_out_indices_norm_and_pruning():
    torch.manual_seed(4)
    ref = timm.create_model(P16, pretrained=False, num_classes=0, depth=4, dynamic_img_size=True).eval()
    m = TimmViT(P16, out_indices=(2, 0, -3), model_kwargs=dict(depth=4)).eval()
    m.load_state_dict(ref.state_dict())
    assert m.out_indices == (2, 0, 1) and m.out_channels == [384] * 3 and m.strides == [16] * 3
    assert len(m.model.blocks) == 3  # the last block is not needed
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        out = m(x)
        want = ref.forward_intermediates(x, indices=[0, 1, 2], norm=True, intermediates_only=True)
    assert len(out) == 3
    for got, idx in zip(out, (2, 0, 1)):
        torch.testing.assert_close(got, want[idx], rtol=1e-5, atol=1e-5)
    # norm=False: raw block outputs; the final LayerNorm of them gives the norm=True maps
    raw = TimmViT(P16, out_indices=-1, norm=False, model_kwargs=dict(depth=4)).eval()
    raw.load_state_dict(ref.state_dict())  # 'norm.*' is ignored: the norm was removed
    assert isinstance(raw.model.norm, torch.nn.Identity)
    full = TimmViT(P16, out_indices=-1, model_kwargs=dict(depth=4)).eval()
    full.load_state_dict(ref.state_dict())
    with torch.no_grad():
        r, n = raw(x)[0], full(x)[0]
        torch.testing.assert_close(ref.norm(r.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), n, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(r, n)


def test_every_parameter_gets_a_gradient():
    for name in (P16, P14_REG):
        m = TimmViT(name, model_kwargs=SMALL).train()
        m(torch.randn(2, 3, 64, 96))[0].square().mean().backward()
        no_grad = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.any()]
        assert not no_grad, (name, no_grad)


def test_frozen():
    m = TimmViT(P14, model_kwargs=dict(SMALL, drop_path_rate=0.5), frozen=True)
    m.train()
    assert m.training and not m.model.training and all(not mod.training for mod in m.model.modules())
    assert all(not p.requires_grad for p in m.parameters())
    x = torch.randn(2, 3, 56, 56)
    out = m(x)[0]
    assert not out.requires_grad
    torch.testing.assert_close(out, m(x)[0])  # eval: no stochastic depth
    m.train(False).train(True)
    assert not m.model.training


# -- weights ------------------------------------------------------------------------------------------------


def test_load_from_file_all_key_formats(tmp_path):
    src = perturbed(TimmViT(P16, model_kwargs=SMALL), seed=5)
    bare = timm.create_model(P16, pretrained=False, num_classes=0, **SMALL)
    bare.load_state_dict({k[len('model.') :]: v for k, v in src.state_dict().items()})
    full_bare = timm.create_model(P16, pretrained=False, num_classes=1000, **SMALL)  # with a head
    full_bare.load_state_dict(bare.state_dict(), strict=False)
    variants = {
        'wrapped.pth': src.state_dict(),
        'bare.pth': bare.state_dict(),
        'bare_with_head.pth': full_bare.state_dict(),
        'mmengine.pth': dict(state_dict={'backbone.' + k: v for k, v in src.state_dict().items()}, meta=dict(epoch=1)),
        'ddp.pth': {'module.' + k: v for k, v in bare.state_dict().items()},
    }
    for fname, obj in variants.items():
        path = tmp_path / fname
        torch.save(obj, path)
        dst = TimmViT(P16, model_kwargs=SMALL, pretrained=str(path))
        assert_params_equal(dst, src)
    # a DINO-style training checkpoint: pick the entry
    other = perturbed(TimmViT(P16, model_kwargs=SMALL), seed=6)
    path = tmp_path / 'dino_full.pth'
    torch.save(
        dict(student=other.state_dict(), teacher={'backbone.' + k: v for k, v in bare.state_dict().items()}), path
    )
    assert_params_equal(TimmViT(P16, model_kwargs=SMALL, pretrained=str(path)), src)  # 'teacher' by default
    assert_params_equal(TimmViT(P16, model_kwargs=SMALL, pretrained=str(path), checkpoint_key='student'), other)
    with pytest.raises(ValueError, match="checkpoint_key 'nope'"):
        TimmViT(P16, model_kwargs=SMALL, pretrained=str(path), checkpoint_key='nope')


def test_load_dinov2_original_format_and_resample_pos_embed(tmp_path):
    src = perturbed(TimmViT(P14, model_kwargs=SMALL), seed=7)  # pos_embed for 518: 37x37
    sd = {k[len('model.') :]: v for k, v in src.state_dict().items()}
    sd['mask_token'] = torch.zeros(1, 384)  # as in facebookresearch/dinov2 releases
    path = tmp_path / 'dinov2_vits14.pth'
    torch.save(sd, path)
    dst = TimmViT(P14, model_kwargs=SMALL, pretrained=str(path))
    assert_params_equal(dst, src)
    small = TimmViT(P14, model_kwargs=SMALL, img_size=224, pretrained=str(path))  # 16x16 grid
    assert small.model.pos_embed.shape == (1, 1 + 16 * 16, 384)
    torch.testing.assert_close(small.model.blocks[1].mlp.fc2.weight, src.model.blocks[1].mlp.fc2.weight)


def test_missing_parameters_raise(tmp_path):
    one_block = TimmViT(P16, model_kwargs=dict(depth=1))
    path = tmp_path / 'depth1.pth'
    torch.save(one_block.state_dict(), path)
    with pytest.raises(RuntimeError, match='missing'):
        TimmViT(P16, model_kwargs=SMALL, pretrained=str(path))
    with pytest.raises(FileNotFoundError):
        TimmViT(P16, model_kwargs=SMALL, pretrained=str(tmp_path / 'absent.pth'))


@pytest.mark.parametrize('fmt', ['wrapped', 'bare'])
def test_init_cfg_pretrained(tmp_path, fmt):
    src = perturbed(TimmViT(P16, model_kwargs=SMALL), seed=8)
    sd = src.state_dict() if fmt == 'wrapped' else {k[len('model.') :]: v for k, v in src.state_dict().items()}
    path = tmp_path / f'{fmt}.pth'
    torch.save(sd, path)
    dst = TimmViT(P16, model_kwargs=SMALL, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(AssertionError):
        assert_params_equal(dst, src)
    dst.init_weights()
    assert_params_equal(dst, src)


def test_init_weights_keeps_loaded_weights_and_segmentor_prefix(tmp_path):
    # mmengine's init_weights must not re-initialise the timm model (timm's own init_weights would)
    src = perturbed(TimmViT(P16, model_kwargs=SMALL), seed=9)
    path = tmp_path / 'bare.pth'
    torch.save({k[len('model.') :]: v for k, v in src.state_dict().items()}, path)
    model = MODELS.build(
        seg_cfg(dict(type='TimmViT', model_name=P16, model_kwargs=SMALL, pretrained=str(path)), *vit_neck_head(384))
    )
    model.init_weights()
    assert_params_equal(model.backbone, src)
    # a whole segmentor checkpoint -> init_cfg with prefix='backbone.'
    seg_path = tmp_path / 'segmentor.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), seg_path)
    dst = TimmViT(
        P16, model_kwargs=SMALL, init_cfg=dict(type='Pretrained', checkpoint=str(seg_path), prefix='backbone.')
    )
    dst.init_weights()
    assert_params_equal(dst, src)


# -- errors -------------------------------------------------------------------------------------------------
def test_errors():
    with pytest.raises(ValueError, match=r"timm.list_models\('vit_\*'\)"):
        TimmViT('vit_smal_patch16_224')
    with pytest.raises(ValueError, match='not a timm VisionTransformer'):
        TimmViT('resnet18')
    with pytest.raises(ValueError, match='hybrid'):
        TimmViT('vit_small_r26_s32_224', model_kwargs=SMALL)
    with pytest.raises(ValueError, match='out of range'):
        TimmViT(P16, out_indices=(2,), model_kwargs=SMALL)
    with pytest.raises(ValueError, match='out of range'):
        TimmViT(P16, out_indices=-3, model_kwargs=SMALL)
    with pytest.raises(TypeError):
        TimmViT(P16, pretrained=1, model_kwargs=SMALL)
    m = TimmViT(P16, model_kwargs=SMALL)
    with pytest.raises(ValueError, match=r'\[B, 3, H, W\]'):
        m(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r'\[B, 3, H, W\]'):
        m(torch.randn(1, 1, 32, 32))


# -- segmentors: FeatUpJBU behind transformer backbones ---------------------------------------------------------
def seg_cfg(backbone, neck, head, test_cfg=None):
    return ConfigDict(
        type='GuidedEncoderDecoder',
        data_preprocessor=data_preprocessor(size_divisor=32),
        backbone=backbone,
        neck=neck,
        decode_head=head,
        train_cfg=dict(),
        test_cfg=test_cfg or dict(mode='whole'),
    )


def vit_neck_head(channels, stride=16, **target):
    target = target or dict(out_size=None, output_stride=4)
    return dict(type='FeatUpJBU', in_channels=channels, in_index=0, feature_strides=stride, **target), fcn_head(
        channels
    )


MIT_CHANNELS = [16, 32, 80, 128]
CASES = {
    'mmseg_vit': (
        dict(
            type='VisionTransformer',
            img_size=64,
            patch_size=16,
            embed_dims=64,
            num_layers=2,
            num_heads=2,
            out_indices=(1,),
            final_norm=True,
        ),
        *vit_neck_head(64),
    ),
    'mmseg_vit_to_image': (
        dict(
            type='VisionTransformer',
            img_size=64,
            patch_size=16,
            embed_dims=64,
            num_layers=2,
            num_heads=2,
            out_indices=(1,),
            final_norm=True,
        ),
        *vit_neck_head(64, out_size='image'),
    ),
    'mmseg_mit': (
        dict(
            type='MixVisionTransformer',
            in_channels=3,
            embed_dims=16,
            num_stages=4,
            num_layers=[1, 1, 1, 1],
            num_heads=[1, 2, 5, 8],
            patch_sizes=[7, 3, 3, 3],
            sr_ratios=[8, 4, 2, 1],
            out_indices=(0, 1, 2, 3),
        ),
        dict(
            type='FeatUpJBU',
            in_channels=MIT_CHANNELS,
            in_index=3,
            out_size=None,
            output_stride=4,
            feature_strides=[4, 8, 16, 32],
        ),
        dict(
            type='SegformerHead',
            in_channels=MIT_CHANNELS,
            in_index=[0, 1, 2, 3],
            channels=32,
            num_classes=4,
            norm_cfg=dict(type='BN'),
            align_corners=False,
            loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0),
        ),
    ),
    'timm_vit_p16': (dict(type='TimmViT', model_name=P16, pretrained=False, model_kwargs=SMALL), *vit_neck_head(384)),
    'timm_dinov2_p14': (
        dict(type='TimmViT', model_name=P14, pretrained=False, model_kwargs=SMALL),
        *vit_neck_head(384, stride=14),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize('case', list(CASES))
def test_segmentor_train_val_slide(case):
    backbone, neck, head = CASES[case]
    model = MODELS.build(seg_cfg(backbone, neck, head))
    model.init_weights()
    data = batch(w=96)
    # every upsampler parameter and (a trainable) backbone get gradients
    model.train()
    proc = model.data_preprocessor(copy.deepcopy(data), True)
    sum(v for k, v in model(**proc, mode='loss').items() if 'loss' in k).backward()
    no_grad = [n for n, p in model.named_parameters() if n.startswith('neck.') and (p.grad is None or not p.grad.any())]
    assert not no_grad, no_grad
    backbone_grads = [
        p.grad is not None and bool(p.grad.any()) for n, p in model.named_parameters() if n.startswith('backbone.')
    ]
    assert any(backbone_grads)
    if backbone['type'] == 'TimmViT':
        assert all(backbone_grads)  # nothing unused (heads and unused blocks are pruned): DDP-friendly
    model.zero_grad()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = model.train_step(copy.deepcopy(data), OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01)))
    assert torch.isfinite(losses['decode.loss_ce'])
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith('backbone.') for n in changed) and any(n.startswith('neck.') for n in changed)
    # full-size predictions, whole and slide inference
    preds = model.val_step(copy.deepcopy(data))
    assert len(preds) == 2 and preds[0].pred_sem_seg.data.shape == (1, 64, 96)
    model.test_cfg = ConfigDict(mode='slide', crop_size=(64, 64), stride=(32, 32))
    seen = []
    hook = model.neck.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(tuple(kwargs['guidance'].shape)), with_kwargs=True
    )
    preds = model.val_step(batch(n=1, w=96))
    hook.remove()
    assert preds[0].pred_sem_seg.data.shape == (1, 64, 96)
    assert seen == [(1, 3, 64, 64)] * 2


def test_segmentor_with_frozen_dinov2():
    backbone, neck, head = CASES['timm_dinov2_p14']
    model = MODELS.build(seg_cfg(dict(backbone, frozen=True), neck, head))
    model.init_weights()
    model.train()
    assert not model.backbone.model.training
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optim = OptimWrapper(torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01))
    losses = model.train_step(batch(w=96), optim)
    assert torch.isfinite(losses['decode.loss_ce'])
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert not any(n.startswith('backbone.') for n in changed) and any(n.startswith('neck.') for n in changed)
