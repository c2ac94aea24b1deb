"""ONNX export of whole segmentors (featup_plugin.mmseg.deploy, tools/deploy/export_onnx.py): FeatUpJBU behind a
ResNet and a ViT, a PAC hot-swapped model; standard ops only, onnxruntime equals PyTorch, dynamic batch."""

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip('mmseg', reason='MMSegmentation is not installed')
pytest.importorskip('onnx', reason='onnx is not installed')
pytest.importorskip('onnxruntime', reason='onnxruntime is not installed')
pytest.importorskip('timm', reason='timm is not installed')

import onnxruntime as ort  # noqa: E402
from mmengine.config import Config, ConfigDict  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

from featup_plugin.mmseg.deploy import SegmentorForExport, check_onnx, export_onnx  # noqa: E402
from tests import ROOT  # noqa: E402
from tests.featurizers.helpers import SMALL  # noqa: E402
from tests.mmseg.helpers import data_preprocessor, fcn_head  # noqa: E402  (registers the modules)

MAIN_JOB = os.path.join(ROOT, 'configs', 'synthetic', 'fcn-cb_r18_featup_1xb8-600i_featup-synth-128x128.py')
HOTSWAP = os.path.join(ROOT, 'configs', 'synthetic', 'fcn_r18_pac-hotswap_1xb8-200i_featup-synth-128x128.py')


def _from_config(path):
    cfg = Config.fromfile(path)
    model = cfg.model
    if model.get('data_preprocessor') is None and 'data_preprocessor' in cfg:
        model.data_preprocessor = cfg.data_preprocessor
    return MODELS.build(model)


def _vit():
    return MODELS.build(
        ConfigDict(
            type='GuidedEncoderDecoder',
            data_preprocessor=data_preprocessor(size_divisor=16),
            backbone=dict(type='TimmViT', model_name='vit_small_patch16_224', model_kwargs=SMALL),
            neck=dict(
                type='FeatUpJBU', in_channels=384, in_index=0, out_size=None, output_stride=4, feature_strides=16
            ),
            decode_head=fcn_head(384),
            train_cfg=dict(),
            test_cfg=dict(mode='whole'),
        )
    )


def _ort(path, x):
    sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    return torch.from_numpy(sess.run(None, {'image': x.numpy()})[0])


@pytest.mark.parametrize(
    'build',
    [lambda: _from_config(MAIN_JOB), _vit, lambda: _from_config(HOTSWAP)],
    ids=['featup_resnet', 'featup_vit', 'pac_hotswap'],
)
def test_whole_segmentor_exports_to_standard_onnx(tmp_path, build):
    torch.manual_seed(0)
    model = build().eval()
    wrapper = SegmentorForExport(model)
    path = str(tmp_path / 'model.onnx')
    export_onnx(wrapper, path, (1, 3, 64, 64))
    res = check_onnx(path, wrapper, torch.randn(1, 3, 64, 64), reps=1)
    assert res['standard_ops_only'], res['op_types']
    assert res['shape'] == [1, model.decode_head.num_classes, 64, 64]
    assert res['max_rel_diff'] < 1e-4 and res['label_agreement'] > 0.999
    # the batch axis is dynamic: a batch of 3 gives PyTorch's result per image
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = wrapper(x)
    torch.testing.assert_close(_ort(path, x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_raw_input_and_labels(tmp_path):
    torch.manual_seed(0)
    model = _from_config(MAIN_JOB).eval()
    wrapper = SegmentorForExport(model, output='labels', raw_input=True)
    path = str(tmp_path / 'labels.onnx')
    export_onnx(wrapper, path, (2, 3, 64, 64))
    raw = torch.rand(2, 3, 64, 64) * 255
    # what mmseg's data preprocessor does to the raw image (BGR -> RGB, then mean / std), then the logits' argmax
    dp = model.data_preprocessor
    norm = (raw.flip(1) - dp.mean.view(1, 3, 1, 1)) / dp.std.view(1, 3, 1, 1)
    with torch.no_grad():
        want = SegmentorForExport(model)(norm).argmax(1)
    got = _ort(path, raw)
    assert got.dtype == torch.int64 and got.shape == (2, 64, 64)
    assert (got == want).float().mean() > 0.999


def test_bad_arguments():
    with pytest.raises(TypeError, match='not an mmseg EncoderDecoder'):
        SegmentorForExport(torch.nn.Conv2d(3, 3, 1))
    model = _vit()
    with pytest.raises(ValueError, match="output must be 'logits' or 'labels'"):
        SegmentorForExport(model, output='probs')
    with pytest.raises(ValueError, match=r'input_shape must be \(B, C, H, W\)'):
        export_onnx(SegmentorForExport(model), 'x.onnx', (3, 64, 64))


@pytest.mark.slow
def test_export_onnx_cli_with_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = _from_config(MAIN_JOB)
    ckpt = tmp_path / 'model.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    out, js = tmp_path / 'm.onnx', tmp_path / 'r.json'
    res = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, 'tools', 'deploy', 'export_onnx.py'),
            MAIN_JOB,
            str(ckpt),
            str(out),
            '--shape',
            '64',
            '96',
            '--batch',
            '2',
            '--json',
            str(js),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert 'CHECK PASSED' in res.stdout and out.exists()
    import json

    result = json.loads(js.read_text())
    assert result['input_shape'] == [2, 3, 64, 96] and result['standard_ops_only']
    # the exported weights are the checkpoint's: the ONNX graph equals this model in PyTorch
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = SegmentorForExport(model.eval())(x)
    torch.testing.assert_close(_ort(str(out), x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_export_keeps_each_modules_mode(tmp_path):
    model = _from_config(MAIN_JOB).eval()
    model.decode_head.train()  # a mixed state must come back as it was
    wrapper = SegmentorForExport(model)
    export_onnx(wrapper, str(tmp_path / 'm.onnx'), (1, 3, 32, 32))
    assert not model.training and not model.backbone.training and model.decode_head.training
