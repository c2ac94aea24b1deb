"""Converting FeatUp's official JBU checkpoints (featup_plugin/checkpoint/featup.py,
tools/model_converters/convert_featup_checkpoint.py).

No official checkpoint is downloaded: each test synthesises a Lightning checkpoint with the official layout, written
here from FeatUp's source (``featup/upsamplers.py``: ``JBUStack(feat_dim)`` = ``up1``..``up4`` =
``JBULearnedRange(3, feat_dim, 32, radius=3)`` + ``fixup_proj = Sequential(Dropout2d(0.2), Conv2d(C, C, 1))``;
``featup/train_jbu_upsampler.py``: the LightningModule's ``model`` (frozen backbone + ChannelNorm), ``upsampler``,
``downsampler`` (AttentionDownsampler) and ``scale_net`` (ScaleNet)). The converted weights must make our
``JBUStack(feat_dim)`` compute FeatUp's forward, which ``official_forward`` below re-derives from the formulas,
reading the *official* tensors directly (so it does not depend on the key mapping under test).
"""

import argparse
import importlib.util
import math
import os
import subprocess
import sys
import warnings
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from featup_plugin.checkpoint import featup as cv
from featup_plugin.checkpoint.featup import (
    FeatUpCheckpointError,
    UntrustedCheckpointError,
    convert_featup_state_dict,
    load_featup_checkpoint,
)
from featup_plugin.upsamplers import JBUStack
from tests import ROOT  # noqa: E402

CLI = os.path.join(ROOT, 'tools', 'model_converters', 'convert_featup_checkpoint.py')
C = 8  # a small feat_dim


def official_upsampler_shapes(feat_dim, stages=4):
    """FeatUp's JBUStack(feat_dim).state_dict() layout, written out from featup/upsamplers.py (state_dict order:
    a module's own parameters, then its children's)."""
    shapes = OrderedDict()
    for i in range(1, stages + 1):
        shapes.update(
            [
                (f'up{i}.range_temp', ()),  # nn.Parameter(tensor(0.0))
                (f'up{i}.sigma_spatial', ()),  # nn.Parameter(tensor(1.0)); own parameters first
                (f'up{i}.range_proj.0.weight', (32, 3, 1, 1)),  # Conv2d(guidance_dim=3, key_dim=32, 1, 1)
                (f'up{i}.range_proj.0.bias', (32,)),
                (f'up{i}.range_proj.3.weight', (32, 32, 1, 1)),  # [1] GELU, [2] Dropout2d(.1), [3] Conv2d(32, 32)
                (f'up{i}.range_proj.3.bias', (32,)),
                (f'up{i}.fixup_proj.0.weight', (49, 52, 1, 1)),  # Conv2d(3 + 7**2, 7**2, 1, 1)
                (f'up{i}.fixup_proj.0.bias', (49,)),
                (f'up{i}.fixup_proj.3.weight', (49, 49, 1, 1)),  # [1] GELU, [2] Dropout2d(.1), [3] Conv2d(49, 49)
                (f'up{i}.fixup_proj.3.bias', (49,)),
            ]
        )
    shapes['fixup_proj.1.weight'] = (feat_dim, feat_dim, 1, 1)  # [0] Dropout2d(0.2), [1] Conv2d(C, C, 1)
    shapes['fixup_proj.1.bias'] = (feat_dim,)
    return shapes


def official_state_dict(feat_dim=C, dtype=torch.float32, seed=0, stages=4):
    """The ``state_dict`` of FeatUp's Lightning module: random tensors with the official names and shapes."""
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    # model = Sequential(frozen featurizer, ChannelNorm(dim)): a few backbone-like tensors + the LayerNorm.
    sd['model.0.model.patch_embed.proj.weight'] = torch.randn(feat_dim, 3, 4, 4, generator=g, dtype=dtype)
    sd['model.0.model.blocks.0.norm1.weight'] = torch.ones(feat_dim, dtype=dtype)
    sd['model.1.norm.weight'] = torch.ones(feat_dim, dtype=dtype)
    sd['model.1.norm.bias'] = torch.zeros(feat_dim, dtype=dtype)
    for k, shape in official_upsampler_shapes(feat_dim, stages).items():
        if k.endswith('range_temp'):
            t = 0.3 * torch.randn(shape, generator=g, dtype=dtype)
        elif k.endswith('sigma_spatial'):
            t = 1.0 + 0.3 * torch.randn(shape, generator=g, dtype=dtype)
        else:
            fan_in = shape[1] if len(shape) == 4 else 8
            t = torch.randn(shape, generator=g, dtype=dtype) / math.sqrt(fan_in)
        sd['upsampler.' + k] = t
    # AttentionDownsampler(dim, kernel_size=16, final_size=14): attention_net = Sequential(Dropout, Linear(dim, 1))
    sd['downsampler.w'] = torch.randn(16, 16, generator=g, dtype=dtype)
    sd['downsampler.b'] = torch.randn(16, 16, generator=g, dtype=dtype)
    sd['downsampler.attention_net.1.weight'] = torch.randn(1, feat_dim, generator=g, dtype=dtype)
    sd['downsampler.attention_net.1.bias'] = torch.randn(1, generator=g, dtype=dtype)
    # ScaleNet(dim): net = Conv2d(dim, 1, 1)
    sd['scale_net.net.weight'] = torch.randn(1, feat_dim, 1, 1, generator=g, dtype=dtype)
    sd['scale_net.net.bias'] = torch.randn(1, generator=g, dtype=dtype)
    return sd


def lightning_checkpoint(state_dict, hyper_parameters=None):
    """What ``trainer.save_checkpoint`` writes around the state dict."""
    return {
        'epoch': 0,
        'global_step': 2000,
        'pytorch-lightning_version': '1.9.5',
        'state_dict': state_dict,
        'loops': {'fit_loop': {'state_dict': {}, 'epoch_progress': {'total': {'ready': 1, 'completed': 0}}}},
        'callbacks': {
            "ModelCheckpoint{'monitor': None, 'mode': 'min'}": {
                'best_model_score': None,
                'best_model_path': '',
                'dirpath': '../../checkpoints/jbu/x',
            }
        },
        'optimizer_states': [
            {
                'state': {0: {'step': torch.tensor(2000.0), 'exp_avg': torch.zeros(16, 16)}},
                'param_groups': [{'lr': 1e-3, 'betas': (0.9, 0.999), 'params': [0, 1, 2]}],
            }
        ],
        'lr_schedulers': [],
        'hparams_name': 'kwargs',
        'hyper_parameters': hyper_parameters
        if hyper_parameters is not None
        else {'model_type': 'vit', 'upsampler': 'jbu_stack', 'downsampler': 'attention', 'lr': 1e-3},
    }


# -- FeatUp's forward from the formulas, on the official tensors ------------------------------------------------
def official_stage(t, p, source, guidance, radius=3):
    """JBULearnedRange.forward (eval): ``t`` the official state dict, ``p`` e.g. ``'upsampler.up1.'``."""
    d = 2 * radius + 1
    b, _, gh, gw = guidance.shape

    def conv(x, name):
        return F.conv2d(x, t[p + name + '.weight'], t[p + name + '.bias'])

    q = conv(F.gelu(conv(guidance, 'range_proj.0')), 'range_proj.3')  # keys [B, 32, H, W]
    qn = F.unfold(F.pad(q, [radius] * 4, mode='reflect'), d).view(b, q.shape[1], d * d, gh, gw)
    logits = (qn * q.unsqueeze(2)).sum(1)  # <q(p), q(p + t)>
    rng = torch.softmax(t[p + 'range_temp'].exp().clamp(1e-4, 1e4) * logits, dim=1)
    lin = torch.linspace(-1, 1, d, dtype=guidance.dtype)
    dist2 = (lin[:, None] ** 2 + lin[None, :] ** 2).reshape(1, d * d, 1, 1)
    kern = rng * torch.exp(-dist2 / (2 * t[p + 'sigma_spatial'] ** 2))
    kern = kern / kern.sum(1, keepdim=True).clamp(1e-7)
    kern = kern + 0.1 * conv(F.gelu(conv(torch.cat([kern, guidance], 1), 'fixup_proj.0')), 'fixup_proj.3')
    hr = F.interpolate(source, (gh, gw), mode='bicubic', align_corners=False)
    cols = F.unfold(F.pad(hr, [radius] * 4, mode='reflect'), d).view(b, source.shape[1], d * d, gh, gw)
    return (cols * kern.unsqueeze(1)).sum(2)  # AdaptiveConv (correlation)


def official_forward(t, source, guidance):
    """JBUStack.forward (eval): four x2 stages, guidance = adaptive_avg_pool2d(image, (2h, 2w)), final fixup."""
    feats = source
    for i in range(1, 5):
        h, w = feats.shape[-2:]
        feats = official_stage(t, f'upsampler.up{i}.', feats, F.adaptive_avg_pool2d(guidance, (2 * h, 2 * w)))
    return feats + 0.1 * F.conv2d(feats, t['upsampler.fixup_proj.1.weight'], t['upsampler.fixup_proj.1.bias'])


def _load_cli():
    spec = importlib.util.spec_from_file_location('_convert_featup_checkpoint_cli', CLI)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_cli(args, timeout=120):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''), OMP_NUM_THREADS='1')
    return subprocess.run(
        [sys.executable, CLI] + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def untrusted_ckpt(tmp_path, monkeypatch):
    """A Lightning checkpoint whose hyper_parameters are pickled objects (an AttributeDict from a package that is
    not importable when loading, and an argparse.Namespace), as Lightning writes them."""
    moddir = tmp_path / 'mods'
    moddir.mkdir()
    (moddir / '_fake_lightning_parsing.py').write_text(
        'class AttributeDict(dict):\n    def __getattr__(self, k):\n        return self[k]\n'
    )
    monkeypatch.syspath_prepend(str(moddir))
    import _fake_lightning_parsing as fake

    hp = fake.AttributeDict(model_type='vit', lr=1e-3, args=argparse.Namespace(epochs=1))
    path = tmp_path / 'vit_jbu_stack_cocostuff.ckpt'
    torch.save(lightning_checkpoint(official_state_dict(), hyper_parameters=hp), path)
    monkeypatch.delitem(sys.modules, '_fake_lightning_parsing')
    monkeypatch.setattr(sys, 'path', [p for p in sys.path if p != str(moddir)])
    return path


# -- layout --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('feat_dim', [C, 384])
def test_official_layout_is_our_jbustack_layout(feat_dim):
    """Key by key (names, order, shapes): FeatUp's JBUStack(feat_dim) == our JBUStack(feat_dim) with defaults."""
    ours = [(k, tuple(v.shape)) for k, v in JBUStack(feat_dim).state_dict().items()]
    assert ours == list(official_upsampler_shapes(feat_dim).items())
    assert list(cv.official_jbu_stack_shapes(feat_dim).items()) == ours


def test_official_feat_dims_documented():
    assert cv.OFFICIAL_FEAT_DIMS == {
        'vit': 384,
        'dino16': 384,
        'dinov2': 384,
        'clip': 512,
        'maskclip': 512,
        'resnet50': 2048,
    }
    for name, dim in cv.OFFICIAL_FEAT_DIMS.items():
        assert f'``{name}``' in cv.__doc__ and name in cv.guess_backbone(dim)


# -- conversion + forward equivalence --------------------------------------------------------------------------
@pytest.mark.parametrize('dtype, tol', [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_converted_stack_equals_official_forward(dtype, tol):
    raw = official_state_dict(C, dtype=dtype)
    sd, info = convert_featup_state_dict(lightning_checkpoint(raw))
    assert info['feat_dim'] == C and info['num_stages'] == 4
    assert info['dropped'] == {'model': 4, 'downsampler': 4, 'scale_net': 2}
    assert info['unknown_dropped'] == [] and info['dtype'] == str(dtype).split('.')[-1]
    assert set(info['channel_norm']) == {'norm.weight', 'norm.bias'}
    assert list(sd) == list(official_upsampler_shapes(C))
    for k, v in sd.items():
        assert v.dtype == dtype and torch.equal(v, raw['upsampler.' + k])
        assert v.untyped_storage().data_ptr() != raw['upsampler.' + k].untyped_storage().data_ptr()
    assert info['num_params'] == sum(v.numel() for v in sd.values())

    stack = JBUStack(C).to(dtype)
    stack.load_state_dict(sd, strict=True)
    stack.eval()
    g = torch.Generator().manual_seed(1)
    cases = [
        ((2, 6, 6), (96, 96)),  # x16, image at the output size
        ((1, 6, 8), (100, 130)),
    ]  # non-square, image larger than x16: every stage's guidance is pooled
    with torch.no_grad():
        for (b, h, w), img_hw in cases:
            src = torch.randn(b, C, h, w, generator=g, dtype=dtype)
            img = torch.randn(b, 3, *img_hw, generator=g, dtype=dtype)
            ref = official_forward(raw, src, img)
            out = stack(src, img)
            assert out.shape == ref.shape == (b, C, 16 * h, 16 * w)
            torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
            assert ref.abs().max() > 0.1  # a meaningful comparison


def test_converted_stack_with_image_smaller_than_output():
    raw = official_state_dict(C)
    sd, _ = convert_featup_state_dict(raw)
    stack = JBUStack(C)
    stack.load_state_dict(sd)
    stack.eval()
    src, img = torch.randn(1, C, 4, 4), torch.randn(1, 3, 56, 56)  # 4 x 14 px patches -> 64 px output
    with torch.no_grad():
        torch.testing.assert_close(stack(src, img), official_forward(raw, src, img), atol=1e-5, rtol=1e-5)


def test_prefix_src_prefix_and_stage_count():
    raw = official_state_dict(C)
    sd, _ = convert_featup_state_dict(raw, prefix='upsamplers.0.')
    assert all(k.startswith('upsamplers.0.up') or k.startswith('upsamplers.0.fixup_proj.') for k in sd)
    # a bare FeatUp JBUStack.state_dict() (no 'upsampler.'): src_prefix=''
    bare = {k[len('upsampler.') :]: v for k, v in raw.items() if k.startswith('upsampler.')}
    with pytest.raises(FeatUpCheckpointError, match=r"no 'upsampler\.' keys.*src_prefix=''"):
        convert_featup_state_dict(bare)
    sd2, info = convert_featup_state_dict(dict(bare, **{'scale_net.net.bias': torch.zeros(1)}), src_prefix='')
    assert list(sd2) == list(bare) and info['dropped'] == {'scale_net': 1}
    # a project-trained 3-stage stack converts with num_stages=None and loads into JBUStack(C, num_stages=3)
    three = {k: v for k, v in raw.items() if not k.startswith('upsampler.up4.')}
    sd3, info3 = convert_featup_state_dict(three, num_stages=None)
    assert info3['num_stages'] == 3
    JBUStack(C, num_stages=3).load_state_dict(sd3, strict=True)


# -- errors ------------------------------------------------------------------------------------------------------
def _edit(**changes):
    sd = official_state_dict(C)
    for k, v in changes.items():
        k = k.replace('__', '.')
        if v is None:
            sd.pop(k)
        else:
            sd[k] = v
    return sd


@pytest.mark.parametrize(
    'sd, kwargs, match',
    [
        (
            {'model.0.w': torch.zeros(1), 'downsampler.w': torch.zeros(2, 2)},
            {},
            r"no 'upsampler\.' keys.*found downsampler\.\* \(1\), model\.\* \(1\)",
        ),
        (_edit(**{'upsampler__up1__extra__weight': torch.zeros(3)}), {}, r'unknown upsampler\.up1\.extra\.weight'),
        (_edit(upsampler__up2__sigma_spatial=None), {}, r'missing upsampler\.up2\.sigma_spatial'),
        (_edit(crf__alpha=torch.zeros(1), tv__w=torch.zeros(1)), {}, r'unknown keys outside.*crf\.alpha, tv\.w'),
        (
            {k: v for k, v in official_state_dict(C).items() if not k.startswith('upsampler.up4.')},
            {},
            r'expected 4 stages \(up1, up2, up3, up4.*found up1, up2, up3$',
        ),
        (
            dict(
                official_state_dict(C),
                **{
                    k.replace('up4', 'up5'): v
                    for k, v in official_state_dict(C).items()
                    if k.startswith('upsampler.up4.')
                },
            ),
            {},
            r'found up1, up2, up3, up4, up5',
        ),
        (
            _edit(upsampler__up1__range_proj__0__weight=torch.zeros(16, 3, 1, 1)),
            {},
            r'unexpected shapes.*upsampler\.up1\.range_proj\.0\.weight: \[16, 3, 1, 1\] \(expected \[32, 3, 1, 1\]\)',
        ),
        (
            _edit(upsampler__fixup_proj__1__bias=torch.zeros(C - 1)),
            {},
            r'fixup_proj\.1\.bias: \[7\] \(expected \[8\]\)',
        ),
        (_edit(upsampler__fixup_proj__1__weight=torch.zeros(C, 4, 1, 1)), {}, r'expected \[C, C, 1, 1\]'),
        (_edit(upsampler__fixup_proj__1__weight=None), {}, r'feat_dim cannot be read'),
        (_edit(upsampler__up3__range_temp=torch.tensor(float('nan'))), {}, r'non-finite.*up3\.range_temp'),
        (_edit(upsampler__up3__range_temp=torch.tensor(1)), {}, r'non-floating-point.*up3\.range_temp'),
        ({'state_dict': {'upsampler.up1.range_temp': 'x'}}, {}, r'non-tensor entries'),
        ({'epoch': 3, 'hyper_parameters': {}}, {}, r"no 'state_dict' entry"),
        ([1, 2], {}, r'expected a checkpoint dict, got list'),
    ],
)
def test_conversion_errors(sd, kwargs, match):
    with pytest.raises(FeatUpCheckpointError, match=match):
        convert_featup_state_dict(sd, **kwargs)


def test_allow_unknown_drops_and_reports():
    sd, info = convert_featup_state_dict(_edit(crf__alpha=torch.zeros(1)), allow_unknown=True)
    assert info['unknown_dropped'] == ['crf.alpha'] and len(sd) == 42


# -- files -------------------------------------------------------------------------------------------------------
def test_load_featup_checkpoint_files(tmp_path, untrusted_ckpt):
    raw = official_state_dict(C)
    plain = tmp_path / 'plain.ckpt'
    torch.save(lightning_checkpoint(raw), plain)
    sd = load_featup_checkpoint(plain)
    ref, _ = convert_featup_state_dict(raw)
    assert list(sd) == list(ref) and all(torch.equal(sd[k], ref[k]) for k in ref)

    with pytest.raises(UntrustedCheckpointError, match=r'_fake_lightning_parsing\.AttributeDict.*--trust'):
        load_featup_checkpoint(untrusted_ckpt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        sd_t = load_featup_checkpoint(untrusted_ckpt, trust=True, prefix='upsamplers.0.')
    assert any('_fake_lightning_parsing.AttributeDict' in str(w.message) for w in caught)
    assert all(torch.equal(sd_t['upsamplers.0.' + k], ref[k]) for k in ref)

    with pytest.raises(FileNotFoundError):
        load_featup_checkpoint(tmp_path / 'missing.ckpt')
    garbage = tmp_path / 'garbage.ckpt'
    garbage.write_bytes(b'\x80\x02not a checkpoint at all' * 10)
    for trust in (False, True):
        with pytest.raises(FeatUpCheckpointError, match='garbage.ckpt') as err:
            load_featup_checkpoint(garbage, trust=trust)
        assert not isinstance(err.value, UntrustedCheckpointError)


def test_cli_in_process_check(tmp_path, capsys):
    cli = _load_cli()
    src = tmp_path / 'in.ckpt'
    raw = official_state_dict(C)
    torch.save(lightning_checkpoint(raw), src)
    out = tmp_path / 'sub' / 'jbu.pth'
    assert cli.main([str(src), str(out), '--check']) == 0
    text = capsys.readouterr().out
    assert 'loaded strictly' in text and 'feat_dim 8' in text and 'downsampler.* (4)' in text
    assert 'ChannelNorm' in text
    stack = JBUStack(C)
    stack.load_state_dict(torch.load(out, weights_only=True), strict=True)

    bad = tmp_path / 'bad.ckpt'
    torch.save({'state_dict': {k: v for k, v in raw.items() if 'up4' not in k}}, bad)
    assert cli.main([str(bad), str(tmp_path / 'x.pth')]) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: wrong number of JBU stages') and not (tmp_path / 'x.pth').exists()


@pytest.mark.slow
def test_cli_subprocess(tmp_path, untrusted_ckpt):
    out = tmp_path / 'neck.pth'
    res = _run_cli([str(untrusted_ckpt), str(out), '--prefix', 'upsamplers.0.'])
    assert res.returncode == 1 and '--trust' in res.stderr and 'Traceback' not in res.stderr, res.stderr
    assert not out.exists()
    res = _run_cli([str(untrusted_ckpt), str(out), '--prefix', 'upsamplers.0.', '--trust'])
    assert res.returncode == 0, res.stderr
    assert 'feat_dim 8' in res.stdout and "keys prefixed 'upsamplers.0.'" in res.stdout
    sd = torch.load(out, weights_only=True)
    ref, _ = convert_featup_state_dict(official_state_dict(C), prefix='upsamplers.0.')
    assert list(sd) == list(ref) and all(torch.equal(sd[k], ref[k]) for k in ref)


def test_mmseg_neck_loads_prefixed_output(tmp_path):
    """``--prefix upsamplers.0.`` + ``init_cfg=dict(type='Pretrained', checkpoint=OUT)`` loads into FeatUpJBU."""
    pytest.importorskip('mmseg')
    from featup_plugin.mmseg.necks.featup_jbu import FeatUpJBU

    raw = official_state_dict(C)
    sd, _ = convert_featup_state_dict(raw, prefix='upsamplers.0.')
    path = tmp_path / 'neck.pth'
    torch.save(sd, path)
    neck = FeatUpJBU(in_channels=C, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    neck.init_weights()
    got = neck.upsamplers[0].state_dict()
    assert all(torch.equal(got[k], raw['upsampler.' + k]) for k in got)
