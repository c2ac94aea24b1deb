"""The mmseg ``PacHotSwap`` registration with ``preset='fcn8s'``: a segmentor whose backbone holds torchvision's
VGG-16 ``features`` gets conv3_3 / conv4_3 / conv5_3 swapped, guided by conv2_2's ReLU, and starts as the original."""

import copy

import pytest
import torch

pytest.importorskip('mmseg', reason='MMSegmentation is not installed')
pytest.importorskip('torchvision')

import torch.nn as nn  # noqa: E402
from mmengine.model import BaseModule  # noqa: E402
from mmengine.optim import OptimWrapper  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

from featup_plugin.layers.pac_hotswap import swapped_layers  # noqa: E402
from tests.mmseg.helpers import batch, data_preprocessor, fcn_head  # noqa: E402


@MODELS.register_module(name='_TestVGG16Features', force=True)
class VGG16Features(BaseModule):
    """torchvision's ``vgg16().features`` as an mmseg backbone: returns conv5_3 after its ReLU (stride 16)."""

    def __init__(self, inplace_relu=False, init_cfg=None):
        super().__init__(init_cfg)
        from torchvision.models.vgg import cfgs, make_layers

        self.features = make_layers(cfgs['D'])
        for m in self.features:
            if isinstance(m, nn.ReLU):
                m.inplace = inplace_relu  # torchvision's are in place

    def forward(self, x):
        return (self.features[:30](x),)


def vgg_segmentor(inplace_relu=False):
    return dict(
        type='EncoderDecoder',
        data_preprocessor=data_preprocessor(size_divisor=32),
        backbone=dict(type='_TestVGG16Features', inplace_relu=inplace_relu),
        decode_head=fcn_head(512, in_index=0),
        train_cfg=dict(),
        test_cfg=dict(mode='whole'),
    )


def test_preset_fcn8s_in_a_segmentor_starts_as_the_original_and_trains():
    torch.manual_seed(0)
    plain = MODELS.build(vgg_segmentor())
    swapped = MODELS.build(dict(type='PacHotSwap', model=vgg_segmentor(), preset='fcn8s'))
    names = ['backbone.features.14', 'backbone.features.21', 'backbone.features.28']
    assert swapped_layers(swapped) == names
    assert swapped.get_submodule(names[0]).source.spec == 'backbone.features.8'
    missing, unexpected = swapped.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == sorted(f'{n}.{p}' for n in names for p in ('blend', 'guidance_scale'))
    plain.eval(), swapped.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (swapped(x, mode='tensor') - plain(x, mode='tensor')).abs().max() <= 1e-5
    swapped.train()
    optim = OptimWrapper(torch.optim.SGD(swapped.parameters(), lr=0.01))
    blends = {n: swapped.get_submodule(n).blend for n in names}
    grads = {}
    for n, p in blends.items():
        p.register_hook(lambda g, n=n: grads.update({n: g.abs().item()}))
    losses = swapped.train_step(copy.deepcopy(batch(h=64, w=64)), optim)
    assert torch.isfinite(losses['decode.loss_ce'])
    assert set(grads) == set(names) and all(v > 0 for v in grads.values())


def test_pac_hot_swap_registration_errors():
    with pytest.raises(ValueError, match='give targets'):
        MODELS.build(dict(type='PacHotSwap', model=vgg_segmentor()))
    with pytest.raises(ValueError, match='either a preset or targets / guidance'):
        MODELS.build(dict(type='PacHotSwap', model=vgg_segmentor(), preset='fcn8s', guidance='backbone:input'))
    with pytest.raises(ValueError, match='unknown preset'):
        MODELS.build(dict(type='PacHotSwap', model=vgg_segmentor(), preset='fcn16'))
    with pytest.raises(TypeError, match='segmentor config dict'):
        MODELS.build(dict(type='PacHotSwap', model=nn.Identity(), targets='x'))
    # explicit targets still default to the backbone's input as guidance, with the new smooth_kernel_type option
    model = MODELS.build(
        dict(type='PacHotSwap', model=vgg_segmentor(), targets='backbone.features.28', smooth_kernel_type='gaussian')
    )
    layer = model.get_submodule('backbone.features.28')
    assert layer.source.spec == 'backbone:input' and layer.smooth_kernel_type == 'gaussian'


def test_preset_fcn8s_trains_with_torchvisions_inplace_relus():
    model = MODELS.build(dict(type='PacHotSwap', model=vgg_segmentor(inplace_relu=True), preset='fcn8s'))
    # the compiled PAC op returns its own tensor (not a view), so VGG's ReLU(inplace=True) after a swapped conv works
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    log = model.train_step(batch(n=1, h=32, w=32), OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01)))
    assert torch.isfinite(log['loss']).all()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert any('features.28' in n for n in changed)


def _load_tool():
    import importlib.util
    import os

    from tests import ROOT

    spec = importlib.util.spec_from_file_location(
        '_pac_hotswap_tool', os.path.join(ROOT, 'tools', 'model_converters', 'pac_hotswap.py')
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_pac_hotswap_tool_preset(tmp_path, capsys):
    """tools/model_converters/pac_hotswap.py --preset fcn8s (dry run: builds the wrapped model, lists the swaps)."""
    cfg = tmp_path / 'vgg_fcn.py'
    cfg.write_text(f'model = {vgg_segmentor()!r}\n')
    tool = _load_tool()
    tool.main([str(cfg), 'none', '--preset', 'fcn8s', '--dry-run', '--work-dir', str(tmp_path / 'w')])
    assert 'swapped: backbone.features.14, backbone.features.21, backbone.features.28' in capsys.readouterr().out
    with pytest.raises(SystemExit, match='unknown --preset'):
        tool.main([str(cfg), 'none', '--preset', 'fcn16', '--dry-run'])
    with pytest.raises(SystemExit, match='fixes the guidance'):
        tool.main([str(cfg), 'none', '--preset', 'fcn8s', '--guidance', 'backbone:input', '--dry-run'])
    with pytest.raises(SystemExit):  # argparse: --targets and --preset are exclusive, one is required
        tool.main([str(cfg), 'none', '--dry-run'])
