"""FeatUp's six featurizers (featup_plugin/featurizers/featup.py, resnet.py and the TimmViTFeatures options they use).

Each layer choice is checked against an independent re-derivation written here from FeatUp's code: a small OpenAI
CLIP image tower in OpenAI's layout (``nn.MultiheadAttention``, QuickGELU, ``ln_pre`` / ``ln_post`` / ``proj``)
computing mhamilton723/CLIP's ``forward_spatial`` (FeatUp's ``clip``) and the vendored MaskCLIP's
``get_patch_encodings`` (``forward_v`` of the last block: ``out_proj(in_proj_v(ln_1(x)))``), DINO's
``interpolate_pos_encoding``, and torchvision's ResNet-50 up to ``layer4``. Small random-init models, no download.
"""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

timm = pytest.importorskip('timm', reason='timm is not installed')

from featup_plugin.checkpoint.featup import OFFICIAL_FEAT_DIMS  # noqa: E402
from featup_plugin.featurizers import (  # noqa: E402
    FEATUP_FEATURIZERS,
    FeatUpFeaturizer,
    TimmResNetFeatures,
    TimmViTFeatures,
    WeightsDownloadError,
    featurizer_spec,
    resample_pos_embed,
)
from featup_plugin.featurizers import featup as featup_mod  # noqa: E402
from featup_plugin.upsamplers import ChannelNorm  # noqa: E402
from tests.featurizers.helpers import SMALL, tokens_to_map  # noqa: E402
from tests.helpers import one_thread, perturb  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures('one_thread')

CLIP_TINY = dict(embed_dim=64, depth=2, num_heads=2, img_size=64, num_classes=32)  # grid 4x4, 32-d projection


# -- the spec table --------------------------------------------------------------------------------------------
def test_specs_cover_the_official_checkpoints():
    assert list(FEATUP_FEATURIZERS) == ['vit', 'dino16', 'dinov2', 'clip', 'maskclip', 'resnet50']
    assert {n: s.dim for n, s in FEATUP_FEATURIZERS.items()} == OFFICIAL_FEAT_DIMS
    pretrained = set(timm.list_pretrained())
    for spec in FEATUP_FEATURIZERS.values():
        assert spec.model in pretrained or spec.kind == 'resnet', spec.model  # the tag picks the weights
    opts = {n: s.vit_options for n, s in FEATUP_FEATURIZERS.items()}
    assert opts['clip'] == dict(pos_embed_interp='bilinear', token_head=True)
    assert opts['maskclip'] == dict(pos_embed_interp='dino', token_head=True, last_block='value')
    assert all(opts[n] == dict(pos_embed_interp='dino') for n in ('vit', 'dino16', 'dinov2'))
    assert FEATUP_FEATURIZERS['vit'].model == 'vit_small_patch16_224.augreg_in21k_ft_in1k'  # supervised, not DINO
    assert 'quickgelu' in FEATUP_FEATURIZERS['clip'].model  # OpenAI's CLIP uses QuickGELU
    with pytest.raises(ValueError, match=r"unknown FeatUp featurizer 'dino8'.*'dinov2'"):
        featurizer_spec('dino8')
    assert featurizer_spec('DINO16').name == 'dino16'


@pytest.mark.slow
def test_real_architectures_dims_and_any_input_size():
    """The six real architectures (random init): FeatUp's widths and strides, square and non-square inputs."""
    want = {'vit': (384, 16), 'dino16': (384, 16), 'dinov2': (384, 14), 'clip': (512, 16), 'maskclip': (512, 16)}
    want['resnet50'] = (2048, 32)
    for name, (dim, stride) in want.items():
        f = FeatUpFeaturizer(name)
        assert (f.dim, f.stride) == (dim, stride)
        with torch.no_grad():
            assert f(torch.randn(1, 3, 224, 224)).shape == (1, dim, -(-224 // stride), -(-224 // stride))
            assert f(torch.randn(1, 3, 96, 160)).shape == (1, dim, -(-96 // stride), -(-160 // stride))


# -- positional embedding resampling ---------------------------------------------------------------------------
def dino_interpolate_pos_encoding(pos, h0, w0):
    """DINO's ``interpolate_pos_encoding`` (also DINOv2's and FeatUp's maskclip/interpolate.py), re-written from
    their code: class entry kept, the square grid resized with ``scale_factor = (n + 0.1) / sqrt(N)``."""
    n = pos.shape[1] - 1
    side = int(math.sqrt(n))
    if n == h0 * w0 and h0 == w0:  # DINO's early return
        return pos
    grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((h0 + 0.1) / side, (w0 + 0.1) / side), mode='bicubic')
    assert grid.shape[-2:] == (h0, w0)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)], dim=1)


def clip_fork_pos_embed(pos, n):
    """mhamilton723/CLIP's ``forward_spatial`` (square grids): ``grid_sample`` of the embedding on a
    ``linspace(-1, 1, n)`` grid, ``align_corners=True``, border padding."""
    side = int(math.sqrt(pos.shape[1] - 1))
    grid = pos[0, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    xx, yy = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing='ij')
    coords = torch.cat([xx.unsqueeze(-1), yy.unsqueeze(-1)], dim=-1).unsqueeze(0)
    sampled = F.grid_sample(grid, coords.permute(0, 2, 1, 3), padding_mode='border', align_corners=True)
    sampled = sampled.reshape(grid.shape[1], n * n).permute(1, 0)
    return torch.cat([pos[0, :1], sampled], dim=0).unsqueeze(0)


def test_resample_pos_embed_modes():
    pos = torch.randn(1, 1 + 37 * 37, 8)  # DINOv2's 518 px grid
    dino = resample_pos_embed(pos, (16, 16), (37, 37), 1, 'dino')  # DINOv2 at 224 px, FeatUp's training size
    torch.testing.assert_close(dino, dino_interpolate_pos_encoding(pos, 16, 16))
    timm_way = resample_pos_embed(pos, (16, 16), (37, 37), 1, 'timm')  # antialiased: not what DINOv2 computes
    assert (timm_way - dino).abs().max() > 1e-2
    small = torch.randn(1, 1 + 4 * 4, 8)
    torch.testing.assert_close(resample_pos_embed(small, (7, 7), (4, 4), 1, 'bilinear'), clip_fork_pos_embed(small, 7))
    assert resample_pos_embed(small, (3, 5), (4, 4), 1, 'bilinear').shape == (1, 16, 8)  # non-square too
    assert resample_pos_embed(small, (4, 4), (4, 4), 1, 'dino') is small  # native grid: unchanged
    with pytest.raises(ValueError, match='pos_embed_interp must be one of'):
        resample_pos_embed(small, (3, 3), (4, 4), 1, 'nearest')


@pytest.mark.parametrize(
    'name, kwargs, hw',
    [
        ('vit_small_patch16_224', {}, (80, 48)),
        ('vit_small_patch14_reg4_dinov2', {}, (70, 98)),  # register tokens (no_embed_class)
        ('vit_small_patch16_224', dict(class_token=False, global_pool='avg'), (64, 64)),
    ],
)
def test_own_forward_equals_timm_forward_intermediates(name, kwargs, hw):
    m = perturb(TimmViTFeatures(name, out_indices=(0, 1), model_kwargs=dict(SMALL, **kwargs)), seed=3, scale=0.02)
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        want = m.model.forward_intermediates(x, indices=[0, 1], norm=True, output_fmt='NCHW', intermediates_only=True)
        got = m(x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_dino_featurizers_tokens_and_interpolation():
    """vit / dino16 / dinov2: last-block tokens after the final norm (DINO's ``get_intermediate_feat(norm=True)``,
    DINOv2's ``x_norm_patchtokens``); other grids use DINO's positional interpolation."""
    for name, patch in (('dino16', 16), ('dinov2', 14), ('vit', 16)):
        f = FeatUpFeaturizer(name, model_kwargs=SMALL)
        perturb(f.backbone, seed=4, scale=0.02)
        m = f.backbone.model
        native = tuple(m.patch_embed.grid_size)
        x = torch.randn(1, 3, native[0] * patch, native[1] * patch)
        with torch.no_grad():
            torch.testing.assert_close(f(x), tokens_to_map(m.forward_features(x), 1, *native), rtol=1e-5, atol=1e-5)
            # another grid (DINOv2 at 224 px: 16x16 from the 37x37 embedding): the hand-made token path
            x = torch.randn(1, 3, 5 * patch, 3 * patch)
            tok = m.patch_embed.proj(x).flatten(2).transpose(1, 2)
            tok = torch.cat([m.cls_token, tok], 1) + dino_interpolate_pos_encoding(m.pos_embed, 5, 3)
            for blk in m.blocks:
                tok = blk(tok)
            torch.testing.assert_close(f(x), tokens_to_map(m.norm(tok), 1, 5, 3), rtol=1e-5, atol=1e-5)


# -- CLIP and MaskCLIP against OpenAI's layout -----------------------------------------------------------------
class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class OpenAIVisual(nn.Module):
    """OpenAI CLIP's ``VisionTransformer`` (``clip/model.py``), small: the parameter names of its state dict."""

    def __init__(self, width=64, layers=2, heads=2, patch=16, res=64, out=32):
        super().__init__()
        s = width**-0.5
        self.patch = patch
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(s * torch.randn(width))
        self.positional_embedding = nn.Parameter(s * torch.randn((res // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList()
        for _ in range(layers):
            blk = nn.Module()
            blk.attn = nn.MultiheadAttention(width, heads, batch_first=True)
            blk.ln_1, blk.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
            blk.mlp = nn.Sequential()
            blk.mlp.add_module('c_fc', nn.Linear(width, 4 * width))
            blk.mlp.add_module('gelu', QuickGELU())
            blk.mlp.add_module('c_proj', nn.Linear(4 * width, width))
            self.transformer.resblocks.append(blk)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(s * torch.randn(width, out))

    def tokens(self, img, pos):
        x = self.conv1(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + pos
        return self.ln_pre(x)

    @staticmethod
    def block(blk, x):
        y = blk.ln_1(x)
        x = x + blk.attn(y, y, y, need_weights=False)[0]
        return x + blk.mlp(blk.ln_2(x))

    def forward_spatial(self, img):
        """FeatUp's ``clip``: every block, ``ln_post`` on every token, ``@ proj``, patch tokens."""
        n = img.shape[-1] // self.patch
        x = self.tokens(img, clip_fork_pos_embed(self.positional_embedding[None], n))
        for blk in self.transformer.resblocks:
            x = self.block(blk, x)
        x = self.ln_post(x) @ self.proj
        return x[:, 1:].reshape(img.shape[0], n, n, -1).permute(0, 3, 1, 2)

    def get_patch_encodings(self, img):
        """FeatUp's ``maskclip``: blocks but the last, then the last block's ``forward_v``, patch tokens,
        ``ln_post``, ``@ proj``."""
        h, w = img.shape[-2] // self.patch, img.shape[-1] // self.patch
        x = self.tokens(img, dino_interpolate_pos_encoding(self.positional_embedding[None], h, w))
        *first, last = self.transformer.resblocks
        for blk in first:
            x = self.block(blk, x)
        c = last.attn.embed_dim
        v = F.linear(last.ln_1(x), last.attn.in_proj_weight[-c:], last.attn.in_proj_bias[-c:])
        x = F.linear(v, last.attn.out_proj.weight, last.attn.out_proj.bias)
        x = self.ln_post(x[:, 1:]) @ self.proj
        return x.reshape(img.shape[0], h, w, -1).permute(0, 3, 1, 2)


@pytest.fixture(scope='module')
def openai_clip_file(tmp_path_factory):
    torch.manual_seed(11)
    ref = perturb(OpenAIVisual(), seed=12, scale=0.05).eval()
    path = tmp_path_factory.mktemp('clip') / 'ViT-tiny.pt'
    sd = {'visual.' + k: v for k, v in ref.state_dict().items()}
    sd['logit_scale'] = torch.tensor(4.6)  # the text tower's keys are not used
    sd['token_embedding.weight'] = torch.randn(10, 64)
    torch.save(sd, path)
    return ref, str(path)


@pytest.mark.parametrize('size', [64, 112])  # the native 4x4 grid, and 7x7 (resampled positions)
def test_clip_and_maskclip_equal_openai_layout_rederivation(openai_clip_file, size):
    ref, path = openai_clip_file
    x = torch.randn(2, 3, size, size)
    clip = FeatUpFeaturizer('clip', weights=path, model_kwargs=CLIP_TINY)
    maskclip = FeatUpFeaturizer('maskclip', weights=path, model_kwargs=CLIP_TINY)
    assert clip.dim == maskclip.dim == 32 and clip.weights_source == path
    with torch.no_grad():
        torch.testing.assert_close(clip(x), ref.forward_spatial(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(maskclip(x), ref.get_patch_encodings(x), rtol=1e-4, atol=1e-4)
        assert (maskclip(x) - clip(x)).abs().max() > 1e-2  # the value path is not the ordinary output


def test_maskclip_value_path_by_hand():
    """The MaskCLIP option on timm's own modules: qkv's last third, attn.proj, no residual / MLP; then norm, head."""
    f = FeatUpFeaturizer('maskclip', model_kwargs=CLIP_TINY)
    perturb(f.backbone, seed=5, scale=0.05)
    m = f.backbone.model
    x = torch.randn(1, 3, 64, 96)
    f.backbone.pos_embed_interp = 'timm'  # so that timm's own embedding below is the reference's
    with torch.no_grad():
        tok = m.norm_pre(m._pos_embed(m.patch_embed(x)))  # 4x6 grid
        tok = m.blocks[0](tok)
        last = m.blocks[1]
        w, b = last.attn.qkv.weight, last.attn.qkv.bias
        v = last.norm1(tok) @ w[128:].T + b[128:]
        out = m.head(m.norm(last.attn.proj(v)))[:, 1:]
        torch.testing.assert_close(f(x), out.reshape(1, 4, 6, 32).permute(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


def test_token_head_options_and_errors():
    m = TimmViTFeatures('vit_base_patch16_clip_quickgelu_224.openai', token_head=True, model_kwargs=CLIP_TINY)
    assert m.out_channels == [32] and isinstance(m.model.head, nn.Linear)
    assert 'model.head.weight' in m.state_dict()  # kept: the projection is part of the featurizer
    with pytest.raises(ValueError, match='set norm=True'):
        TimmViTFeatures('vit_small_patch16_224', token_head=True, norm=False, model_kwargs=SMALL)
    with pytest.raises(ValueError, match='needs a Linear classifier head'):
        TimmViTFeatures('vit_small_patch16_224', token_head=True, model_kwargs=dict(SMALL, num_classes=0))
    with pytest.raises(ValueError, match="last_block must be 'full' or 'value'"):
        TimmViTFeatures('vit_small_patch16_224', last_block='values', model_kwargs=SMALL)
    with pytest.raises(ValueError, match='pos_embed_interp must be one of'):
        TimmViTFeatures('vit_small_patch16_224', pos_embed_interp='cubic', model_kwargs=SMALL)


# -- ResNet-50 ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def torchvision_resnet50(tmp_path_factory):
    tv = pytest.importorskip('torchvision')
    torch.manual_seed(13)
    net = tv.models.resnet50()
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, nn.BatchNorm2d):  # non-trivial statistics so that eval-mode BN matters
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.2, 0.6)
    path = tmp_path_factory.mktemp('rn') / 'resnet50-tv.pth'
    torch.save(net.state_dict(), path)
    return net.eval(), str(path)


def tv_layer4(net, x):
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def test_resnet50_is_torchvision_layer4(torchvision_resnet50, monkeypatch):
    net, path = torchvision_resnet50
    f = FeatUpFeaturizer('resnet50', weights=path)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(f(x), tv_layer4(net, x), rtol=1e-4, atol=1e-4)
    assert f(x).shape == (1, 2048, 2, 3) and not f.backbone.model.training
    assert not any(k.startswith('model.fc.') for k in f.backbone.state_dict())
    # pretrained=True: FeatUp's torchvision file through torch.hub (here a local state dict)
    asked = []

    def fake_load(url, **kwargs):
        asked.append(url)
        return torch.load(path, weights_only=True)

    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', fake_load)
    g = FeatUpFeaturizer('resnet50', pretrained=True)
    assert asked == [featup_mod.FEATUP_RESNET50_URL] == ['https://download.pytorch.org/models/resnet50-19c8e357.pth']
    torch.testing.assert_close(g(x), f(x))
    assert 'resnet50-19c8e357.pth' in g.weights_source


def test_resnet_features_errors(tmp_path):
    with pytest.raises(ValueError, match='stage must be 1, 2, 3 or 4'):
        TimmResNetFeatures('resnet18', stage=5)
    with pytest.raises(ValueError, match='not a timm ResNet'):
        TimmResNetFeatures('vit_small_patch16_224', model_kwargs=SMALL)
    torch.save({'conv1.weight': torch.zeros(64, 3, 7, 7)}, tmp_path / 'partial.pth')
    with pytest.raises(RuntimeError, match='missing'):
        TimmResNetFeatures('resnet18', pretrained=str(tmp_path / 'partial.pth'))
    r = TimmResNetFeatures('resnet18', stage=2)
    assert (r.out_channels, r.stride) == (128, 8) and r(torch.randn(1, 3, 32, 32)).shape == (1, 128, 4, 4)


# -- weights, norm, errors -----------------------------------------------------------------------------------------
def test_featup_checkpoint_layout_and_use_norm(tmp_path):
    """A FeatUp Lightning / hub state dict holds the frozen featurizer under ``model.0.`` (its network under
    ``.model``) and the ChannelNorm under ``model.1.``: the backbone loads from it."""
    src = perturb(FeatUpFeaturizer('dino16', model_kwargs=SMALL), seed=6, scale=0.02)
    timm_keys = {k[len('backbone.model.') :]: v for k, v in src.state_dict().items()}
    featup_sd = {f'model.0.model.{k}': v for k, v in timm_keys.items()}
    featup_sd.update({'model.1.norm.weight': torch.ones(384), 'upsampler.up1.range_temp': torch.zeros(())})
    torch.save({'state_dict': featup_sd, 'epoch': 0}, tmp_path / 'featup.ckpt')
    got = FeatUpFeaturizer('dino16', weights=str(tmp_path / 'featup.ckpt'), use_norm=True, model_kwargs=SMALL)
    assert isinstance(got.norm, ChannelNorm) and got.use_norm
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(got(x), ChannelNorm(384)(src(x)))
    assert not any(p.requires_grad for p in got.parameters()) and not got.train().backbone.model.training
    # this module's own state dict loads too
    torch.save(src.state_dict(), tmp_path / 'own.pth')
    own = FeatUpFeaturizer('dino16', weights=str(tmp_path / 'own.pth'), model_kwargs=SMALL)
    torch.testing.assert_close(own(x), src(x))


def test_pretrained_offline_and_errors(monkeypatch, tmp_path):
    real = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError('We could not connect to huggingface.co')
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, 'create_model', offline)
    with pytest.raises(WeightsDownloadError, match=r"timm 'vit_small_patch14_dinov2.lvd142m'.*weights=PATH"):
        FeatUpFeaturizer('dinov2', pretrained=True, model_kwargs=SMALL)
    f = FeatUpFeaturizer('dinov2', model_kwargs=SMALL)  # pretrained=False: no download, said in the repr
    assert 'random init (pretrained=False)' in repr(f)
    with pytest.raises(TypeError, match='weights=PATH'):
        FeatUpFeaturizer('dinov2', pretrained='dinov2.pth')
    with pytest.raises(FileNotFoundError, match='absent.pth'):
        FeatUpFeaturizer('dinov2', weights=str(tmp_path / 'absent.pth'))
