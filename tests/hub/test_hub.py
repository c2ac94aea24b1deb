"""featup_plugin.hub.load / list_models and hubconf.py.

Nothing is downloaded: ``torch.hub.download_url_to_file`` is replaced by a copy of a FeatUp-layout Lightning
checkpoint written here (tests/checkpoint's ``official_state_dict``: FeatUp's key names and shapes) and timm's
download by random init; torch.hub's cache is a temporary folder. The upsampled output is compared with
tests/checkpoint's re-derivation of FeatUp's JBUStack forward from the official tensors.
"""

import argparse
import importlib.util
import os
import shutil
import urllib.error

import pytest
import torch
import torch.nn.functional as F

timm = pytest.importorskip('timm', reason='timm is not installed')

from featup_plugin import hub  # noqa: E402
from featup_plugin.checkpoint import UntrustedCheckpointError, UpsamplerWeightsError  # noqa: E402
from featup_plugin.featurizers import FeatUpFeaturizer, WeightsDownloadError  # noqa: E402
from featup_plugin.upsamplers import ChannelNorm, JBUStack  # noqa: E402
from tests import ROOT  # noqa: E402
from tests.checkpoint.test_featup_checkpoint import (  # noqa: E402
    lightning_checkpoint,
    official_forward,
    official_state_dict,
)
from tests.helpers import one_thread  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures('one_thread')

ROOT_URL = 'https://marhamilresearch4.blob.core.windows.net/feature-upsampling-public/pretrained/'


def featup_file(path, feat_dim=384, seed=0, pickled_hparams=False):
    """A FeatUp-layout ``{name}_jbu_stack_cocostuff.ckpt`` with a non-identity ChannelNorm (``model.1.norm``)."""
    sd = official_state_dict(feat_dim, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    sd['model.1.norm.weight'] = 1 + 0.5 * torch.rand(feat_dim, generator=g)
    sd['model.1.norm.bias'] = 0.1 * torch.randn(feat_dim, generator=g)
    hp = argparse.Namespace(model_type='dino16') if pickled_hparams else None  # a pickled object, as Lightning's
    torch.save(lightning_checkpoint(sd, hyper_parameters=hp), path)
    return sd


@pytest.fixture
def offline_timm(monkeypatch):
    """timm builds random weights where it would download them; returns the names it was asked to download."""
    real, asked = timm.create_model, []

    def create(name, pretrained=False, **kwargs):
        if pretrained:
            asked.append(name)
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, 'create_model', create)
    return asked


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    d = tmp_path / 'torch_hub'
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(d))
    return d


def test_names_urls_and_cache_paths(hub_dir):
    assert hub.list_models() == ['vit', 'dino16', 'dinov2', 'clip', 'maskclip', 'resnet50']
    for name in hub.list_models():  # the URLs of FeatUp's hubconf.py
        assert hub.checkpoint_url(name, use_norm=False) == f'{ROOT_URL}no_norm/{name}_jbu_stack_cocostuff.ckpt'
        if name != 'maskclip':
            assert hub.checkpoint_url(name) == f'{ROOT_URL}{name}_jbu_stack_cocostuff.ckpt'
    with pytest.raises(ValueError, match='maskclip upsampler only without the ChannelNorm'):
        hub.checkpoint_url('maskclip', use_norm=True)
    normed, plain = hub.cached_checkpoint_path('dino16', True), hub.cached_checkpoint_path('dino16', False)
    assert normed != plain and normed.startswith(str(hub_dir)) and '/no_norm/' in plain  # flavours do not collide
    with pytest.raises(ValueError, match=r"unknown FeatUp featurizer 'dino'.*\['vit', 'dino16'"):
        hub.load('dino', pretrained=False)
    with pytest.raises(TypeError, match='upsampler_weights=PATH'):
        hub.load('dino16', pretrained='weights.ckpt')


def test_pretrained_false_is_random_and_says_so():
    m = hub.load('dino16', pretrained=False)
    assert isinstance(m, hub.UpsampledBackbone) and not m.training
    assert (m.name, m.dim, m.stride, m.use_norm) == ('dino16', 384, 16, True)
    assert isinstance(m.model, torch.nn.Sequential) and isinstance(m.model[1], ChannelNorm)  # FeatUp's .model
    assert isinstance(m.featurizer, FeatUpFeaturizer) and m.model[0] is m.featurizer
    assert isinstance(m.upsampler, JBUStack) and m.upsampler.num_stages == 4
    assert m.extra_repr().count('random init (pretrained=False)') == 2  # backbone and upsampler
    img = torch.randn(1, 3, 64, 96)  # non-square
    with torch.no_grad():
        out = m(img)
        torch.testing.assert_close(out, m.upsampler(m.model(img), img))
        assert out.shape == (1, 384, 64, 96)  # x16 of the 4x6 tokens (FeatUp's only output)
        assert m(img, output_size=(40, 72)).shape == (1, 384, 40, 72)  # any size up to x16
        assert m(img, output_size='guidance').shape == (1, 384, 64, 96)
    plain = hub.load('maskclip', pretrained=False)  # use_norm=None: False for maskclip, as FeatUp's only file
    assert not plain.use_norm and plain.model is plain.featurizer and plain.dim == 512


def test_pretrained_downloads_featup_file_once_and_matches_featup_forward(hub_dir, offline_timm, monkeypatch):
    src = hub_dir.parent / 'served.ckpt'
    t = featup_file(src, pickled_hparams=True)  # needs a full unpickle: FeatUp's files are read so
    urls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        urls.append(url)
        shutil.copy(src, dst)

    monkeypatch.setattr(torch.hub, 'download_url_to_file', fake_download)
    m = hub.load('dino16')
    assert urls == [f'{ROOT_URL}dino16_jbu_stack_cocostuff.ckpt']
    assert offline_timm == ['vit_small_patch16_224.dino']  # the backbone through timm's own download
    assert hub.cached_checkpoint_path('dino16', True) in m.weights['upsampler'] and 'FeatUp checkpoint' in repr(m)
    torch.testing.assert_close(m.model[1].norm.weight, t['model.1.norm.weight'])  # FeatUp's ChannelNorm tensors
    img = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        lr = m.featurizer(img)
        normed = F.layer_norm(lr.permute(0, 2, 3, 1), (384,), t['model.1.norm.weight'], t['model.1.norm.bias'])
        want = official_forward(t, normed.permute(0, 3, 1, 2), img)
        torch.testing.assert_close(m(img), want, rtol=1e-4, atol=1e-4)
    hub.load('dino16')  # cached: no second download
    assert len(urls) == 1
    hub.load('dino16', use_norm=False)  # the other flavour is another file
    assert urls[-1] == f'{ROOT_URL}no_norm/dino16_jbu_stack_cocostuff.ckpt'
    with pytest.raises(UntrustedCheckpointError, match='trust=True'):  # local files: tensors-only unless trusted
        hub.load('dino16', pretrained=False, upsampler_weights=str(src))
    local = hub.load('dino16', pretrained=False, upsampler_weights=str(src), trust=True)
    torch.testing.assert_close(local.upsampler.up2.range_temp, t['upsampler.up2.range_temp'])
    assert 'random init (pretrained=False)' in local.weights['backbone'] and local.weights['upsampler'].startswith(
        str(src)
    )


def test_offline_errors_name_the_url_and_the_alternative(hub_dir, offline_timm, monkeypatch):
    def no_network(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')

    monkeypatch.setattr(torch.hub, 'download_url_to_file', no_network)
    with pytest.raises(WeightsDownloadError) as err:
        hub.load('dinov2')
    msg = str(err.value)
    assert f'{ROOT_URL}dinov2_jbu_stack_cocostuff.ckpt' in msg and 'upsampler_weights=PATH' in msg
    assert not offline_timm  # stopped before building (and downloading) the backbone
    assert not list(hub_dir.rglob('*.ckpt'))  # no partial file left as if cached


def test_upsampler_files_of_other_kinds_and_widths(tmp_path):
    # a 512-d (CLIP) checkpoint cannot upsample DINO's 384-d features
    featup_file(tmp_path / 'clip.ckpt', feat_dim=512)
    with pytest.raises(UpsamplerWeightsError, match=r"512-d features.*\['clip', 'maskclip'\].*'dino16' gives 384-d"):
        hub.load('dino16', pretrained=False, upsampler_weights=str(tmp_path / 'clip.ckpt'))
    # our upsampler training's checkpoint: upsampler.* beside backbone.*, norm.*, ...; a 2-stage radius-2 stack
    stack = JBUStack(384, num_stages=2, radius=2, key_dim=16)
    with torch.no_grad():
        stack.up1.range_temp.fill_(0.7)
    sd = {f'upsampler.{k}': v for k, v in stack.state_dict().items()}
    sd.update({'backbone.model.cls_token': torch.zeros(1, 1, 384), 'norm.norm.weight': torch.ones(384)})
    torch.save({'state_dict': sd, 'meta': {}}, tmp_path / 'iter_100.pth')
    m = hub.load('dino16', pretrained=False, upsampler_weights=str(tmp_path / 'iter_100.pth'))
    assert (m.upsampler.num_stages, m.upsampler.up1.radius, m.upsampler.up1.key_dim) == (2, 2, 16)
    assert float(m.upsampler.up1.range_temp.detach()) == pytest.approx(0.7)
    assert 'JBU stack under upsampler.' in m.weights['upsampler']
    with torch.no_grad():  # two x2 stages: up to x4
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 384, 16, 16)
    torch.save({'a.up1.range_temp': torch.zeros(()), 'b.up1.range_temp': torch.zeros(())}, tmp_path / 'two.pth')
    with pytest.raises(UpsamplerWeightsError, match=r"JBU stacks under \['a.', 'b.'\]"):
        hub.load('dino16', pretrained=False, upsampler_weights=str(tmp_path / 'two.pth'))


def test_hubconf_local_torch_hub_load(monkeypatch):
    m = torch.hub.load(ROOT, 'dino16', source='local', pretrained=False)
    assert isinstance(m, hub.UpsampledBackbone) and m.name == 'dino16' and m.use_norm
    # every entry point, with FeatUp's names, passes its name and arguments on to hub.load
    spec = importlib.util.spec_from_file_location('_featup_hubconf', os.path.join(ROOT, 'hubconf.py'))
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    entries = [n for n in dir(conf) if callable(getattr(conf, n)) and not n.startswith('_')]
    assert sorted(entries) == sorted(hub.list_models()) and conf.dependencies == ['torch', 'timm']
    calls = []
    monkeypatch.setattr(conf, '_load', lambda name, **kw: calls.append((name, kw)))
    for name in entries:
        assert getattr(conf, name).__doc__
        getattr(conf, name)(pretrained=False, device='cpu')
    assert sorted(calls) == sorted((n, dict(pretrained=False, use_norm=None, device='cpu')) for n in entries)
