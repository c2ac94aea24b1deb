"""Tiny-segmentor builders shared by the MMSegmentation tests (config dicts and data batches).

Imported by the test modules after ``pytest.importorskip('mmseg')``: it imports mmseg and registers the plugin's
modules and mmseg's with mmseg as the default scope (as mmseg's tools/train.py does).
"""

import torch
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample
from mmseg.utils import register_all_modules

import featup_plugin.mmseg  # noqa: F401  (registers the plugin's modules)

register_all_modules()

MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]  # ImageNet, in 0-255 pixel units


def data_preprocessor(size_divisor=32, bgr_to_rgb=True):
    """mmseg's SegDataPreProcessor with ImageNet statistics, padding images with 0 and labels with 255."""
    return dict(
        type='SegDataPreProcessor',
        mean=MEAN,
        std=STD,
        bgr_to_rgb=bgr_to_rgb,
        pad_val=0,
        seg_pad_val=255,
        size_divisor=size_divisor,
    )


def fcn_head(in_channels, in_index=0, num_classes=4):
    """A one-conv FCNHead of 16 channels with BN and cross-entropy."""
    return dict(
        type='FCNHead',
        in_channels=in_channels,
        in_index=in_index,
        channels=16,
        num_convs=1,
        concat_input=False,
        num_classes=num_classes,
        norm_cfg=dict(type='BN'),
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0),
    )


def seg_samples(n, h, w, classes=4, ignore=None):
    """n SegDataSamples with random labels in [0, classes) of h x w; the top third set to ``ignore`` if given."""
    samples = []
    for _ in range(n):
        s = SegDataSample()
        label = torch.randint(0, classes, (1, h, w))
        if ignore is not None:
            label[:, : h // 3] = ignore
        s.gt_sem_seg = PixelData(data=label)
        s.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        samples.append(s)
    return samples


def batch(n=2, h=64, w=64, classes=4):
    """A data batch as a dataloader gives it: n random uint8 images (3 x h x w) and their samples."""
    inputs = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for _ in range(n)]
    return dict(inputs=inputs, data_samples=seg_samples(n, h, w, classes))
