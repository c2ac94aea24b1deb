"""The one checkpoint reader (featup_plugin.checkpoint.io) and the shared stack loader (layout.load_stacks)."""

import importlib.util
import os
import zipfile

import pytest
import torch

from featup_plugin.checkpoint import (
    CheckpointError,
    NotACheckpointError,
    UntrustedCheckpointError,
    UpsamplerMismatchError,
    UpsamplerWeightsError,
    load_mmengine_checkpoint,
    load_stacks,
    read_checkpoint,
    read_state_dict,
)
from featup_plugin.checkpoint.featup import FeatUpCheckpointError
from featup_plugin.upsamplers import ChannelNorm, JBUStack
from tests import ROOT
from tests.helpers import perturb

TORCH_ADVICE = ('weights_only', 'Weights only load failed', 'add_safe_globals')


class _Foreign:
    def __reduce__(self):
        return (os.getcwd, ())  # harmless, but only a trusted full unpickle may call it


def _stack(c=8, n=2, seed=0):
    return perturb(JBUStack(c, num_stages=n), seed)


def _bad_files(tmp_path):
    """{kind: (path, words the message must contain)} for files that are not checkpoints."""
    good = tmp_path / 'good.pth'
    torch.save(_stack().state_dict(), good)
    data = good.read_bytes()
    files = {
        'truncated zip': ('truncated.pth', data[: len(data) // 2], 'truncated'),
        'random bytes': ('random.pth', bytes(range(7, 250)) * 8, 'not a zip archive nor a legacy torch.save file'),
        'text': ('notes.pth', b'these are my notes, not weights\n', 'text file'),
        'json': ('config.pth', b'{"model": {"type": "FeatUpJBU"}}', 'JSON'),
        'empty': ('empty.pth', b'', 'empty'),
    }
    out = {}
    for kind, (name, content, words) in files.items():
        (tmp_path / name).write_bytes(content)
        out[kind] = (str(tmp_path / name), words)
    os.makedirs(tmp_path / 'a_dir.pth')
    out['directory'] = (str(tmp_path / 'a_dir.pth'), 'directory')
    return out


def _assert_names_file(err, path, words=None):
    msg = str(err.value)
    assert os.path.basename(path) in msg, msg
    if words:
        assert words in msg, msg
    assert not any(a in msg for a in TORCH_ADVICE), msg


# -- the reader ------------------------------------------------------------------------------------------------
def test_files_that_are_not_checkpoints(tmp_path):
    for kind, (path, words) in _bad_files(tmp_path).items():
        for trust in (False, True):
            with pytest.raises(NotACheckpointError) as err:
                read_checkpoint(path, trust=trust)
            _assert_names_file(err, path, words)
            assert 'not a PyTorch or safetensors checkpoint' in str(err.value), kind
            assert isinstance(err.value, ValueError) and isinstance(err.value, FeatUpCheckpointError)
        with pytest.raises(NotACheckpointError):
            read_state_dict(path)
        with pytest.raises(NotACheckpointError):
            load_mmengine_checkpoint(path)
    with pytest.raises(FileNotFoundError, match='absent.pth'):
        read_checkpoint(tmp_path / 'absent.pth')


def test_a_zip_that_is_not_a_torch_file(tmp_path):
    path = tmp_path / 'other.zip'
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr('readme.txt', 'hello')
    with pytest.raises(NotACheckpointError, match=r'other\.zip.*data\.pkl'):
        read_checkpoint(path)


def test_formats_that_load(tmp_path):
    sd = _stack().state_dict()
    legacy = tmp_path / 'legacy.pth'
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    zipped = tmp_path / 'zip.pth'
    torch.save(dict(state_dict=sd, meta=dict(epoch=1)), zipped)
    from safetensors.torch import save_file

    st = tmp_path / 'w.safetensors'
    save_file(dict(sd), str(st))
    st_named_pth = tmp_path / 'st_but_named.pth'  # safetensors content whatever the suffix
    st_named_pth.write_bytes(st.read_bytes())
    for path in (legacy, zipped, st, st_named_pth):
        got = read_state_dict(path)
        assert sorted(got) == sorted(sd) and all(torch.equal(got[k], v) for k, v in sd.items()), path
    assert read_checkpoint(zipped)['meta'] == dict(epoch=1)
    got = read_state_dict(dict(teacher=dict(sd), student={}), key='teacher')
    assert list(got) == list(sd)
    assert list(read_state_dict({'model': dict(sd), 'iteration': 3})) == list(sd)
    with pytest.raises(CheckpointError, match="no dict entry 'nope'"):
        read_state_dict(dict(sd), key='nope')
    with pytest.raises(CheckpointError, match='holds no tensors'):
        read_state_dict({'epoch': 3})
    torch.save(torch.ones(2), tmp_path / 'tensor.pth')
    with pytest.raises(CheckpointError, match=r'tensor\.pth holds a Tensor'):
        read_state_dict(tmp_path / 'tensor.pth')


def test_untrusted_objects_are_named_and_trust_reads_them(tmp_path):
    path = tmp_path / 'foreign.pth'
    torch.save(dict(state_dict=dict(w=torch.ones(1)), x=_Foreign()), path)
    with pytest.raises(UntrustedCheckpointError, match='getcwd.*trust=True') as err:
        read_checkpoint(path)
    assert isinstance(err.value, RuntimeError) and 'foreign.pth' in str(err.value)
    assert not any(a in str(err.value) for a in TORCH_ADVICE[1:])
    assert torch.equal(read_state_dict(path, trust=True)['w'], torch.ones(1))


# -- through the adapters ----------------------------------------------------------------------------------------
def test_the_neck_names_a_file_that_is_not_a_checkpoint(tmp_path):
    pytest.importorskip('mmseg')
    from featup_plugin.mmseg.necks.featup_jbu import FeatUpJBU

    for path, words in _bad_files(tmp_path).values():
        neck = FeatUpJBU(8, scale_factor=4, out_size=None, init_cfg=dict(type='Pretrained', checkpoint=path))
        with pytest.raises(NotACheckpointError) as err:
            neck.init_weights()
        _assert_names_file(err, path, words)
        with pytest.raises(NotACheckpointError) as err:
            neck.load_upsampler_weights(path)
        _assert_names_file(err, path, words)


def test_timm_vit_names_a_file_that_is_not_a_checkpoint(tmp_path):
    pytest.importorskip('mmseg')
    pytest.importorskip('timm')
    from featup_plugin.mmseg.backbones import TimmViT

    for path, words in _bad_files(tmp_path).values():
        with pytest.raises(NotACheckpointError) as err:
            TimmViT('vit_small_patch16_224', model_kwargs=dict(depth=1), pretrained=path)
        _assert_names_file(err, path, words)


def test_detectron2_featup_backbone_names_a_file_that_is_not_a_checkpoint(tmp_path):
    pytest.importorskip('detectron2')
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import Backbone

    from featup_plugin.detectron2 import FeatUpBackbone

    class Tiny(Backbone):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 8, stride=8)

        def forward(self, x):
            return {'res5': self.conv(x)}

        def output_shape(self):
            return {'res5': ShapeSpec(channels=8, stride=8)}

    for path, words in _bad_files(tmp_path).values():
        with pytest.raises(NotACheckpointError) as err:
            FeatUpBackbone(Tiny(), output_stride=2, weights=path)
        _assert_names_file(err, path, words)
    good = tmp_path / 'stack.pth'
    stack = _stack(8, 2)
    torch.save(stack.state_dict(), good)
    bb = FeatUpBackbone(Tiny(), output_stride=2, weights=str(good))
    assert all(torch.equal(bb.upsampler('res5').state_dict()[k], v) for k, v in stack.state_dict().items())


def test_converter_cli_names_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        '_convert_cli_reader_test', os.path.join(ROOT, 'tools', 'model_converters', 'convert_featup_checkpoint.py')
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    for path, words in _bad_files(tmp_path).values():
        for extra in ([], ['--trust']):
            assert cli.main([path, str(tmp_path / 'out.pth'), *extra]) == 1
            err = capsys.readouterr().err
            assert os.path.basename(path) in err and 'not a PyTorch or safetensors checkpoint' in err, err
            assert 'Traceback' not in err and not (tmp_path / 'out.pth').exists()


# -- the shared stack loader -----------------------------------------------------------------------------------
def _equal(module, sd):
    own = module.state_dict()
    return all(torch.equal(own[k], v) for k, v in sd.items())


def test_load_stacks_layouts(tmp_path):
    src = _stack(8, 2, seed=1)
    sd = src.state_dict()
    # a bare stack, from a file and from a dict
    path = tmp_path / 'bare.pth'
    torch.save(sd, path)
    for source in (str(path), dict(sd)):
        dst = JBUStack(8, num_stages=2)
        assert load_stacks({'0': dst}, source) == {'0': ''}
        assert _equal(dst, sd)
    # the upsampler training's layout: upsampler.* beside backbone.*, norm.*, scale_net.*
    trainer = dict(
        state_dict={
            **{f'upsampler.{k}': v for k, v in sd.items()},
            'backbone.model.w': torch.ones(1),
            'norm.norm.weight': torch.ones(8),
            'scale_net.net.bias': torch.zeros(1),
        }
    )
    dst = JBUStack(8, num_stages=2)
    assert load_stacks({'0': dst}, trainer) == {'0': 'upsampler'}
    assert _equal(dst, sd)
    # the neck's layout (a segmentor checkpoint): stacks and the channel norms beside them
    other = _stack(4, 2, seed=2)
    norm_w = torch.rand(8) + 0.5
    seg = {
        'model': {
            **{f'neck.upsamplers.0.{k}': v for k, v in other.state_dict().items()},
            **{f'neck.upsamplers.1.{k}': v for k, v in sd.items()},
            'neck.norms.1.norm.weight': norm_w,
            'neck.norms.1.norm.bias': torch.zeros(8),
        }
    }
    ups, norms = (
        {'0': JBUStack(4, num_stages=2), '1': JBUStack(8, num_stages=2)},
        {'0': ChannelNorm(4), '1': ChannelNorm(8)},
    )
    assert load_stacks(ups, seg, norms=norms) == {'0': 'neck.upsamplers.0', '1': 'neck.upsamplers.1'}
    assert _equal(ups['0'], other.state_dict()) and _equal(ups['1'], sd)
    assert torch.equal(norms['1'].norm.weight, norm_w) and torch.equal(norms['0'].norm.weight, torch.ones(4))
    # detectron2's layouts: <feature>.* (upsamplers.state_dict()) and backbone.upsamplers.<feature>.*
    for state in ({f'res5.{k}': v for k, v in sd.items()}, {f'backbone.upsamplers.res5.{k}': v for k, v in sd.items()}):
        dst = JBUStack(8, num_stages=2)
        load_stacks({'res5': dst}, state, who='FeatUpBackbone')
        assert _equal(dst, sd)
    # a prefix selects one of several stacks
    two = {**{f'a.{k}': v for k, v in sd.items()}, **{f'b.{k}': v for k, v in other.state_dict().items()}}
    dst = JBUStack(8, num_stages=2)
    load_stacks({'0': dst}, two, prefix='a.')
    assert _equal(dst, sd)


def test_load_stacks_trims_stages_and_reports_them():
    big = _stack(8, 4, seed=3)
    lines = []
    dst = JBUStack(8, num_stages=2)
    load_stacks({'0': dst}, big.state_dict(), who='Mine', log=lines.append)
    assert len(lines) == 1 and "['up3', 'up4']" in lines[0] and 'Mine' in lines[0]
    assert _equal(dst, {k: v for k, v in big.state_dict().items() if not k.startswith(('up3', 'up4'))})


def test_load_stacks_refuses_what_does_not_fit():
    small = _stack(8, 2, seed=4)
    dst = JBUStack(8, num_stages=3)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(UpsamplerMismatchError, match=r'missing .*upsamplers\.0\.up3') as err:
        load_stacks({'0': dst}, small.state_dict(), who='Mine', where='small.pth')
    assert isinstance(err.value, (KeyError)) and isinstance(err.value, RuntimeError)
    assert 'Mine: small.pth does not fit' in str(err.value)
    assert _equal(dst, before)  # nothing loaded
    wide = JBUStack(16, num_stages=2)
    with pytest.raises(UpsamplerMismatchError, match=r'fixup_proj\.1\.weight has shape \(8, 8, 1, 1\)') as err:
        load_stacks({'0': wide}, small.state_dict())
    assert isinstance(err.value, ValueError)
    # unexpected norm tensors beside the stack
    state = {**{f'upsamplers.0.{k}': v for k, v in small.state_dict().items()}, 'norms.0.norm.extra': torch.ones(8)}
    with pytest.raises(UpsamplerMismatchError, match=r'unexpected .*norms\.0\.norm\.extra'):
        load_stacks({'0': JBUStack(8, num_stages=2)}, state, norms={'0': ChannelNorm(8)})
    with pytest.raises(UpsamplerWeightsError, match='holds no upsampler weights'):
        load_stacks({'0': JBUStack(8, num_stages=2)}, {'conv.weight': torch.ones(1)})
