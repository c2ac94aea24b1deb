"""Every config under configs/ builds, and runs one training iteration on the generated dataset (CPU).

Real-dataset configs (ADE20K, COCO-Stuff-164k, Cityscapes) keep their model, optimiser and schedule; only what
cannot work here is swapped: the dataset (the generated one, 64x64 crops, batch 1), the pad size of the data
preprocessor, and downloads of pretrained weights (random init instead; no internet).
"""

import copy
import glob
import math
import os

import pytest

pytest.importorskip('mmseg', reason='MMSegmentation is not installed')

from mmengine.config import Config, ConfigDict  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

import featup_plugin  # noqa: E402,F401
from featup_plugin.data.synthetic import CLASSES  # noqa: E402
from tests import ROOT  # noqa: E402

# the README's main job (class-balanced cross-entropy) and its bilinear twin
MAIN_JOB = 'fcn-cb_r18_featup_1xb8-600i_featup-synth-128x128.py'
MAIN_JOB_TWIN = 'fcn-cb_r18_bilinear_1xb8-600i_featup-synth-128x128.py'

register_all_modules()

# detectron2/: tests/detectron2/test_detectron2.py; jbu_*: upsampler-training configs, tests/training/test_multiview.py
ALL = sorted(
    p
    for p in glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'), recursive=True)
    if not {'_base_', 'detectron2'} & set(p.split(os.sep)) and not os.path.basename(p).startswith('jbu_')
)
SYNTH = [p for p in ALL if os.sep + 'synthetic' + os.sep in p]
REAL = [p for p in ALL if os.sep + 'featup' + os.sep in p]
NAMES = [os.path.relpath(p, os.path.join(ROOT, 'configs')) for p in ALL]


def test_the_expected_configs_exist():
    names = [os.path.basename(p) for p in REAL]
    for dataset in ('ade20k', 'coco-stuff164k', 'cityscapes'):
        for model in ('linear_vit-s16-dino', 'fcn_vit-s16-dino', 'segformer_mit-b0', 'fcn_r50'):
            got = [n for n in names if n.startswith(model + '_') and dataset in n]
            assert len(got) == 2, (dataset, model, got)  # the FeatUp config and its bilinear twin
        # the SFT guided decoder alone and after the FeatUp neck
        assert sorted(n.split('_8xb2')[0] for n in names if n.startswith('sft_') and dataset in n) == [
            'sft_vit-s16-dino',
            'sft_vit-s16-dino_featup',
        ], dataset
    assert len(SYNTH) >= 4


def _segmentor(model):
    """The segmentor config, also inside a PAC hot-swap wrapper (dict(type='PacHotSwap', model=...))."""
    return model.model if model.get('type') == 'PacHotSwap' else model


def _drop_downloads(model):
    """Random init instead of weights from the internet."""
    model = _segmentor(model)
    model.pretrained = None
    backbone = model.backbone
    if backbone.get('type') == 'TimmViT':
        backbone.pretrained = False
    init = backbone.get('init_cfg')
    if isinstance(init, dict) and init.get('type') == 'Pretrained':
        backbone.init_cfg = None


def _on_generated_data(cfg, root, work_dir, crop=64):
    cfg = copy.deepcopy(cfg)
    _drop_downloads(cfg.model)
    if _segmentor(cfg.model).data_preprocessor.get('size') is not None:
        _segmentor(cfg.model).data_preprocessor.size = (crop, crop)
    cfg.train_dataloader = ConfigDict(
        batch_size=2,
        num_workers=0,
        persistent_workers=False,
        sampler=dict(type='InfiniteSampler', shuffle=True),
        dataset=dict(
            type='FeatUpSyntheticDataset',
            data_root=root,
            data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'),
            pipeline=[
                dict(type='LoadImageFromFile'),
                dict(type='LoadAnnotations'),
                dict(type='RandomCrop', crop_size=(crop, crop)),
                dict(type='PackSegInputs'),
            ],
        ),
    )
    cfg.train_cfg = ConfigDict(type='IterBasedTrainLoop', max_iters=1, val_interval=1000)
    cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
    cfg.test_dataloader = cfg.test_evaluator = cfg.test_cfg = None
    cfg.default_hooks.checkpoint = ConfigDict(type='CheckpointHook', interval=1000, by_epoch=False)
    cfg.default_hooks.logger = ConfigDict(type='LoggerHook', interval=1, log_metric_by_epoch=False)
    cfg.work_dir = work_dir
    cfg.pop('synthetic_data', None)
    return cfg


class _NeckWatch(Hook):
    """Records which trainable neck (and decode head) parameters received a gradient in the training step (all
    neck parameters must: DDP needs it, and a parameter without one would be dead weight)."""

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.trainable, self.got_grad, self.handles = set(), set(), []
        self.head_got_grad = set()
        model = runner.model
        for name, p in model.neck.named_parameters() if model.with_neck else []:
            if p.requires_grad:
                self.trainable.add(name)
                self.handles.append(p.register_hook(lambda g, name=name: self.got_grad.add(name)))
        for name, p in model.decode_head.named_parameters():
            if p.requires_grad:
                self.handles.append(p.register_hook(lambda g, name=name: self.head_got_grad.add(name)))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        for h in self.handles:
            h.remove()


def _train_one_iteration(cfg):
    runner = Runner.from_cfg(cfg)
    runner.watch = _NeckWatch()
    runner.register_hook(runner.watch)
    runner.train()
    loss = runner.message_hub.get_scalar('train/loss').current()
    assert math.isfinite(loss) and loss > 0
    return runner


def _expected_neck(path):
    """The neck a config's name promises: ``_featup_`` FeatUpJBU, ``_bilinear_`` (and ``_pac-hotswap_``) its
    twin, ``_pacjoint_`` the PAC joint upsampler, else none."""
    name = os.path.basename(path)
    if '_bilinear_' in name or '_pac-hotswap_' in name:  # PAC hot-swap configs sit on the bilinear twin
        return 'ResizeNeck'
    if '_pacjoint_' in name:
        return 'PacJointUpsampler'
    return 'FeatUpJBU' if '_featup_' in name else None


GUIDED_NECKS = {'FeatUpJBU': 'FeatUpJBU', 'PacJointUpsampler': 'PacJointUpsamplerNeck'}  # registered -> class


@pytest.mark.slow
@pytest.mark.parametrize('path', ALL, ids=NAMES)
def test_config_builds_and_trains_one_iteration(path, synth_root, tmp_path):
    cfg = Config.fromfile(path)
    assert 'featup_plugin' in cfg.custom_imports['imports']
    name = os.path.basename(path)
    neck = _expected_neck(path)
    seg = _segmentor(cfg.model)
    assert (seg.neck.type if seg.get('neck') else None) == neck
    head = 'SFTGuidedHead' if name.startswith(('sft_', 'sft-')) else None
    if head:
        assert seg.decode_head.type == head
    crf = 'paccrf' in name
    if crf:
        assert seg.decode_head.type == 'PacCRFHead'
    runner = _train_one_iteration(_on_generated_data(cfg, synth_root, str(tmp_path)))
    model = runner.model
    assert (type(model.neck).__name__ if model.with_neck else None) == GUIDED_NECKS.get(neck, neck)
    if neck in GUIDED_NECKS:  # the upsampler took part in the step
        assert runner.watch.trainable and runner.watch.got_grad == runner.watch.trainable
    if crf:  # the CRF's compatibility and kernel weights learn with the head
        crf_params = {n for n, _ in model.decode_head.named_parameters() if n.startswith('crf.')}
        assert crf_params and crf_params <= runner.watch.head_got_grad
    if head:  # the SFT layers (zero-initialised outputs) get gradients from the first step on
        assert type(model.decode_head).__name__ == head
        sft_out = {n for n, _ in model.decode_head.named_parameters() if '.scale.2.' in n or '.shift.2.' in n}
        assert sft_out and sft_out <= runner.watch.head_got_grad


@pytest.mark.parametrize(
    'path', [p for p in ALL if '_bilinear_' in os.path.basename(p)], ids=lambda p: os.path.basename(p)
)
def test_bilinear_twin_differs_only_in_the_upsampler(path):
    twin = Config.fromfile(path)
    featup = Config.fromfile(path.replace('_bilinear_', '_featup_'))
    a, b = twin.model.neck, featup.model.neck
    for key in ('in_index', 'out_size', 'output_stride', 'scale_factor'):
        assert a.get(key, 'image' if key == 'out_size' else None) == b.get(
            key, 'image' if key == 'out_size' else None
        ), key
    da, db = twin.to_dict(), featup.to_dict()
    da['model'].pop('neck'), db['model'].pop('neck')
    assert da == db


@pytest.mark.slow
@pytest.mark.parametrize('path', SYNTH, ids=lambda p: os.path.basename(p))
def test_generated_data_configs_run_as_configured(path, tmp_path):
    """The CPU configs, unchanged except for a smaller generated set and one iteration, train and evaluate."""
    from featup_plugin.data.prepare import prepare_generated_datasets

    cfg = Config.fromfile(path)
    head = _segmentor(cfg.model).decode_head
    head = head.head if head.type == 'PacCRFHead' else head  # the wrapped head holds num_classes
    assert cfg.num_classes == len(CLASSES) == head.num_classes
    root = str(tmp_path / 'data')
    cfg.synthetic_data.update(root=root, num_train=4, num_val=2)
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.dataset.data_root = root
        loader.num_workers, loader.persistent_workers = 0, False
    cfg.train_dataloader.batch_size = 2
    cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = 1
    cfg.work_dir = str(tmp_path / 'work')
    prepare_generated_datasets(cfg)
    runner = _train_one_iteration(cfg)
    metrics = runner.val_loop.run()
    assert {'mIoU', 'thin_iou', 'small_iou', 'bF'} <= set(metrics) and 0 <= metrics['mIoU'] <= 100


def test_main_job_class_weights_are_the_training_splits_median_frequency_weights():
    """The class-balanced main job's class_weight is what tools/analysis_tools/class_weights.py computes from the
    generated training split (median-frequency, rescaled to a pixel-weighted mean of 1), to the 3 decimals kept."""
    import importlib.util

    import numpy as np

    from featup_plugin.data.synthetic import generate_scene, scene_seed

    spec = importlib.util.spec_from_file_location(
        'class_weights', os.path.join(ROOT, 'tools', 'analysis_tools', 'class_weights.py')
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for name in (MAIN_JOB, MAIN_JOB_TWIN):
        cfg = Config.fromfile(os.path.join(ROOT, 'configs', 'synthetic', name))
        data = cfg.synthetic_data
        counts = np.zeros(cfg.num_classes, np.int64)
        for i in range(data.num_train):
            lab = generate_scene(scene_seed(data.seed, 'train', i), data.size)[1]
            counts += np.bincount(lab.ravel(), minlength=cfg.num_classes)
        expected = tool.class_weights(counts, 'median')
        got = np.array(cfg.model.decode_head.loss_decode.class_weight)
        assert np.abs(got - expected).max() <= 0.0005 + 1e-9, (name, got, expected.round(3))
