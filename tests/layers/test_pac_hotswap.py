"""PAC hot-swap: the swapped model equals the original at initialisation, then learns; selection and errors."""

import copy

import pytest
import torch
import torch.nn as nn

from featup_plugin.layers.pac_hotswap import PacHotSwapConv2d, pac_hot_swap, swapped_layers

TOL = 1e-5


def assert_equal_at_init(model, x, targets, **kw):
    model.eval()
    with torch.no_grad():
        ref = model(x)
    swapped = pac_hot_swap(copy.deepcopy(model), targets, **kw)
    assert swapped_layers(swapped), 'nothing was swapped'
    with torch.no_grad():
        out = swapped(x)
    assert (out - ref).abs().max().item() <= TOL
    return swapped, ref


def test_resnet18_equal_at_init_then_learns():
    torchvision = pytest.importorskip('torchvision')
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    swapped, ref = assert_equal_at_init(model, x, ['layer3.*.conv2', 'layer4.1.conv1'], guidance='layer1')
    assert swapped_layers(swapped) == ['layer3.0.conv2', 'layer3.1.conv2', 'layer4.1.conv1']
    layer = swapped.layer3[0].conv2
    conv = model.layer3[0].conv2
    assert isinstance(layer, PacHotSwapConv2d) and layer.weight.data_ptr() != conv.weight.data_ptr()
    torch.testing.assert_close(layer.weight, conv.weight, rtol=0, atol=0)
    # Same state-dict keys as the original plus two per swapped layer.
    extra = set(swapped.state_dict()) - set(model.state_dict())
    assert extra == {f'{n}.{p}' for n in swapped_layers(swapped) for p in ('guidance_scale', 'blend')}
    assert set(model.state_dict()) <= set(swapped.state_dict())
    # The blend gets a gradient at initialisation, so training moves away from the plain conv.
    swapped.train()
    opt = torch.optim.SGD([p for n, p in swapped.named_parameters() if n.endswith('blend')], lr=1.0)
    loss = swapped(x).logsumexp(1).mean()
    loss.backward()
    assert all(swapped.get_submodule(n).blend.grad.abs() > 0 for n in swapped_layers(swapped))
    opt.step()
    swapped.eval()
    with torch.no_grad():
        assert (swapped(x) - ref).abs().max() > 1e-4


def test_image_guidance_predicate_and_deepcopy():
    torchvision = pytest.importorskip('torchvision')
    model = torchvision.models.resnet18(num_classes=5)
    x = torch.randn(1, 3, 48, 40)
    pick = lambda name, m: name.startswith('layer2') and m.kernel_size == (3, 3)  # noqa: E731
    swapped, ref = assert_equal_at_init(model, x, pick, guidance='input')
    assert len(swapped_layers(swapped)) == 4 and all(n.startswith('layer2') for n in swapped_layers(swapped))
    clone = copy.deepcopy(swapped)  # hooks and the shared guidance source are copied together
    for n in swapped_layers(clone):
        clone.get_submodule(n).blend.data.fill_(0.5)
    with torch.no_grad():
        assert (swapped(x) - ref).abs().max() <= TOL
        assert (clone(x) - ref).abs().max() > 1e-4


def test_fcn_vgg16_recipe_in_one_call():
    pytest.importorskip('torchvision')
    from torchvision.models.vgg import cfgs, make_layers

    vgg = make_layers(cfgs['D'])  # = torchvision.models.vgg16().features: 14/21/28 are conv3_3 / conv4_3 / conv5_3
    x = torch.randn(1, 3, 32, 32)
    swapped, _ = assert_equal_at_init(vgg, x, ['14', '21', '28'], guidance='8')  # 8: conv2_2's ReLU
    assert swapped_layers(swapped) == ['14', '21', '28']


def _vgg16_fcn():
    """A VGG-16 nested as torchvision names it (``features``), one level down (``backbone.features``)."""
    from torchvision.models.vgg import cfgs, make_layers

    class Backbone(nn.Module):  # torchvision.models.VGG's naming, without its 25088x4096 classifier
        def __init__(self):
            super().__init__()
            self.features = make_layers(cfgs['D'])

        def forward(self, x):
            return self.features(x)

    class FCN(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = Backbone()
            self.head = nn.Conv2d(512, 5, 1)

        def forward(self, x):
            return self.head(self.backbone(x))

    torch.manual_seed(0)
    return FCN()


def test_fcn8s_preset_equal_at_init_and_guided_by_conv2_2():
    pytest.importorskip('torchvision')
    from torchvision.models.vgg import cfgs, make_layers

    model = _vgg16_fcn()
    assert isinstance(model.backbone.features[7], nn.Conv2d) and isinstance(model.backbone.features[8], nn.ReLU)
    x = torch.randn(2, 3, 64, 64)
    swapped, _ = assert_equal_at_init(model, x, None, preset='fcn8s')
    names = ['backbone.features.14', 'backbone.features.21', 'backbone.features.28']
    assert swapped_layers(swapped) == names
    layers = [swapped.get_submodule(n) for n in names]
    assert all(layer.source is layers[0].source and layer.source.spec == 'backbone.features.8' for layer in layers)
    # The guidance each swapped layer sees is the output of features.8 (conv2_2 after its ReLU), resized.
    relu_out, seen = {}, []
    swapped.backbone.features[8].register_forward_hook(lambda m, a, out: relu_out.setdefault('t', out))
    for layer in layers:
        layer.register_forward_pre_hook(lambda m, a: seen.append(m.source.tensor))
    with torch.no_grad():
        swapped(x)
    assert len(seen) == 3 and all(t is relu_out['t'] for t in seen)
    assert relu_out['t'].shape == (2, 128, 32, 32) and (relu_out['t'] >= 0).all()
    # Once blended in, the guidance matters: conv3_3's output changes (relative to its size).
    outs = []
    layers[0].register_forward_hook(lambda m, a, out: outs.append(out))
    with torch.no_grad():
        swapped(x)
        layers[0].blend.data.fill_(0.5)
        layers[0].guidance_scale.data.fill_(30.0)  # the randomly initialised VGG's activations are small
        swapped(x)
    assert (outs[1] - outs[0]).abs().max() > 1e-2 * outs[0].abs().max()
    # The bare features Sequential (make_layers) gets the same layers, unprefixed.
    feats = make_layers(cfgs['D'])
    swapped, _ = assert_equal_at_init(feats, torch.randn(1, 3, 32, 32), None, preset='fcn8s')
    assert swapped_layers(swapped) == ['14', '21', '28'] and swapped.get_submodule('14').source.spec == '8'


def test_preset_errors():
    pytest.importorskip('torchvision')
    from torchvision.models.vgg import cfgs, make_layers

    model = _vgg16_fcn()
    with pytest.raises(ValueError, match=r"unknown preset 'fcn32s'; presets are \['fcn8s'\]"):
        pac_hot_swap(model, preset='fcn32s')
    with pytest.raises(ValueError, match='either a preset or targets / guidance'):
        pac_hot_swap(model, ['backbone.features.14'], preset='fcn8s')
    with pytest.raises(ValueError, match='either a preset or targets / guidance'):
        pac_hot_swap(model, guidance='backbone.features.3', preset='fcn8s')
    with pytest.raises(ValueError, match='pass targets'):
        pac_hot_swap(model)
    with pytest.raises(ValueError, match='VGG-16 features module.*found none'):
        pac_hot_swap(make_layers(cfgs['D'], batch_norm=True), preset='fcn8s')  # vgg16_bn: other indices
    with pytest.raises(ValueError, match='VGG-16 features module.*found none'):
        pac_hot_swap(nn.Sequential(nn.Conv2d(3, 3, 3)), preset='fcn8s')
    two = nn.ModuleDict({'a': _vgg16_fcn().backbone, 'b': _vgg16_fcn().backbone})
    with pytest.raises(ValueError, match=r"found \['a.features', 'b.features'\]"):
        pac_hot_swap(two, preset='fcn8s')
    assert not swapped_layers(model) and not model._forward_hooks  # nothing left over


def test_timm_model_equal_at_init():
    timm = pytest.importorskip('timm')
    model = timm.create_model('resnet10t', pretrained=False, num_classes=7)
    x = torch.randn(2, 3, 64, 64)
    swapped, _ = assert_equal_at_init(model, x, 'layer[34].*.conv[12]', guidance='input')
    assert len(swapped_layers(swapped)) == 4


def test_mmseg_segmentor_equal_at_init():
    pytest.importorskip('mmseg', reason='MMSegmentation is not installed')
    from mmengine.config import ConfigDict
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    cfg = ConfigDict(
        type='EncoderDecoder',
        data_preprocessor=dict(
            type='SegDataPreProcessor',
            mean=[123.675, 116.28, 103.53],
            std=[58.395, 57.12, 57.375],
            bgr_to_rgb=True,
            size_divisor=32,
        ),
        backbone=dict(
            type='ResNetV1c',
            depth=18,
            num_stages=4,
            out_indices=(0, 1, 2, 3),
            stem_channels=32,
            base_channels=32,
            norm_cfg=dict(type='BN'),
            contract_dilation=True,
            style='pytorch',
        ),
        decode_head=dict(
            type='FCNHead',
            in_channels=256,
            in_index=3,
            channels=16,
            num_convs=1,
            concat_input=False,
            num_classes=4,
            norm_cfg=dict(type='BN'),
            align_corners=False,
            loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0),
        ),
        train_cfg=dict(),
        test_cfg=dict(mode='whole'),
    )
    model = MODELS.build(cfg)
    model.init_weights()
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x, mode='tensor')
    swapped = pac_hot_swap(
        copy.deepcopy(model), ['backbone.layer4.*.conv2', 'decode_head.convs.0.conv'], guidance='backbone:input'
    )
    assert len(swapped_layers(swapped)) == 3
    with torch.no_grad():
        assert (swapped(x, mode='tensor') - ref).abs().max().item() <= TOL
    # Slide inference: the guidance is each crop (the backbone's input), not the whole image.
    swapped.test_cfg = ConfigDict(mode='slide', crop_size=(48, 48), stride=(32, 32))
    model.test_cfg = swapped.test_cfg
    from mmseg.structures import SegDataSample

    metas = [dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64), padding_size=[0, 0, 0, 0])] * 2
    with torch.no_grad():
        a = swapped.inference(x, metas)
        b = model.inference(x, metas)
    assert (a - b).abs().max().item() <= TOL
    del SegDataSample


def test_selection_errors_and_stale_guidance():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.Conv2d(4, 4, 2)
    )
    with pytest.raises(ValueError, match='matches no nn.Conv2d'):
        pac_hot_swap(net, 'layer9')
    with pytest.raises(TypeError, match='not an nn.Conv2d'):
        pac_hot_swap(net, '1')
    with pytest.raises(ValueError, match="cannot swap '2'.*groups"):
        pac_hot_swap(net, '2')
    with pytest.raises(ValueError, match="cannot swap '3'.*odd"):
        pac_hot_swap(net, '3')
    with pytest.raises(ValueError, match='no submodule'):
        pac_hot_swap(net, '0', guidance='nope')

    class StdConv(nn.Conv2d):  # weight standardisation: a different function than nn.Conv2d's
        def forward(self, x):
            w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / (
                self.weight.std((1, 2, 3), keepdim=True) + 1e-5
            )
            return self._conv_forward(x, w, self.bias)

    net.add_module('4', StdConv(4, 4, 3, padding=1))
    with pytest.raises(ValueError, match="cannot swap '4'.*overrides nn.Conv2d.forward"):
        pac_hot_swap(net, '4')
    with pytest.raises(TypeError, match='targets'):
        pac_hot_swap(net, [3])
    assert not swapped_layers(net) and not net._forward_hooks and not net._forward_pre_hooks  # nothing left over
    # Guidance produced after the swapped layer: a clear error, not a silent stale tensor.
    net2 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    pac_hot_swap(net2, '0', guidance='2')
    with pytest.raises(RuntimeError, match='no guidance captured'):
        net2(torch.randn(1, 3, 8, 8))


@pytest.mark.slow
def test_mmseg_hotswap_tool_finetunes_from_a_checkpoint(tmp_path):
    pytest.importorskip('mmseg', reason='MMSegmentation is not installed')
    import os
    import subprocess
    import sys

    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    import featup_plugin  # noqa: F401
    from tests import ROOT

    register_all_modules()
    base_cfg = os.path.join(ROOT, 'configs', 'synthetic', 'fcn_r18_bilinear_1xb8-400i_featup-synth-128x128.py')
    pac_cfg = Config.fromfile(
        os.path.join(ROOT, 'configs', 'synthetic', 'fcn_r18_pac-hotswap_1xb8-200i_featup-synth-128x128.py')
    )
    base = Config.fromfile(base_cfg)
    assert pac_cfg.model.type == 'PacHotSwap' and pac_cfg.model.model == base.model  # the baseline, wrapped
    assert len(swapped_layers(MODELS.build(pac_cfg.model))) == 3
    ckpt = str(tmp_path / 'base.pth')
    torch.save({'state_dict': MODELS.build(base.model).state_dict(), 'meta': {}}, ckpt)
    data = str(tmp_path / 'data')
    opts = [
        f'synthetic_data.root={data}',
        'synthetic_data.num_train=2',
        'synthetic_data.num_val=1',
        'synthetic_data.size=64',
        f'train_dataloader.dataset.data_root={data}',
        f'val_dataloader.dataset.data_root={data}',
        f'test_dataloader.dataset.data_root={data}',
        'train_dataloader.batch_size=2',
        'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
        'val_dataloader.num_workers=0',
        'val_dataloader.persistent_workers=False',
        'train_cfg.max_iters=1',
        'train_cfg.val_interval=1',
        'default_hooks.checkpoint.interval=1',
    ]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    res = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, 'tools', 'model_converters', 'pac_hotswap.py'),
            base_cfg,
            ckpt,
            '--targets',
            'backbone.layer4.1.conv*',
            '--work-dir',
            str(tmp_path / 'work'),
            '--cfg-options',
        ]
        + opts,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert 'swapped: backbone.layer4.1.conv1, backbone.layer4.1.conv2' in out
    assert 'Load checkpoint from' in out and 'mIoU' in out
    # Only the two new parameters per swapped layer are missing from the original checkpoint.
    missing = [ln for ln in out.splitlines() if 'missing keys in source state_dict' in ln]
    assert missing and all(
        k.strip().endswith(('blend', 'guidance_scale')) for ln in missing for k in ln.split(':', 1)[1].split(',')
    )
    saved = torch.load(str(tmp_path / 'work' / 'iter_1.pth'), map_location='cpu', weights_only=False)
    assert 'backbone.layer4.1.conv1.blend' in saved['state_dict']
