"""COCO-Stuff-27 (featup_plugin.data.cocostuff): the hierarchy table is complete, the 182-id and mmseg 171-id
label formats agree, the dataset reads both layouts (and depth), bad inputs raise clear errors."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from featup_plugin.data import cocostuff as cs


def test_hierarchy_covers_every_label_once():
    names = [n for _, fine in cs.COCOSTUFF_HIERARCHY for n in fine]
    assert len(names) == len(set(names)) == len(cs.COCOSTUFF_FINE) == 182
    assert set(names) == set(cs.COCOSTUFF_FINE)
    assert len(cs.COCOSTUFF27_CLASSES) == 27 and min(cs.FINE_TO_COARSE) == 0 and max(cs.FINE_TO_COARSE) == 26


def test_known_mappings():
    idx = cs.COCOSTUFF_FINE.index
    cls = cs.COCOSTUFF27_CLASSES.index
    # ids of the stuffthingmaps PNGs are COCO's ids minus one (person = 1 -> 0; stuff starts at 92 -> 91)
    assert cs.FINE_TO_COARSE[0] == cls('person') == 9
    assert cs.COCOSTUFF_FINE[91] == 'banner' and cs.COCOSTUFF_FINE[181] == 'wood'
    assert cs.FINE_TO_COARSE[idx('fog')] == cls('water')  # COCO-Stuff puts fog under water
    assert cs.FINE_TO_COARSE[idx('potted-plant')] == cls('furniture-things')
    assert cs.FINE_TO_COARSE[idx('tree')] == cls('plant') == 22
    assert cs.COCOSTUFF27_CLASSES[:12][-1] == 'vehicle' and cs.COCOSTUFF27_CLASSES[12] == 'ceiling'


def test_mmseg171_ids_skip_the_unannotated_things():
    assert len(cs.MMSEG_171_IDS) == 171
    skipped = sorted(set(range(182)) - set(cs.MMSEG_171_IDS))
    assert skipped == [11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90]  # street sign, hat, shoe, ... hair brush
    rng = np.random.default_rng(0)
    fine = rng.choice(np.array(cs.MMSEG_171_IDS + (255,)), size=(20, 30)).astype(np.uint8)
    train_ids = np.full_like(fine, 255)
    for t, f in enumerate(cs.MMSEG_171_IDS):
        train_ids[fine == f] = t
    a = cs.to_coarse(fine, 'stuffthingmaps')
    b = cs.to_coarse(train_ids, 'mmseg171')
    np.testing.assert_array_equal(a, b)
    assert (a[fine == 255] == 255).all() and (a[fine != 255] < 27).all()


def test_bad_label_format_and_values():
    with pytest.raises(ValueError, match='label_format'):
        cs.coarse_lut('coco')
    with pytest.raises(ValueError, match='0..255'):
        cs.to_coarse(np.array([[-1, 2]]))


def write_fake_cocostuff(root, n_train=4, n_val=2, size=(40, 52), fmt='stuffthingmaps', depth=True, seed=0):
    """A COCO-Stuff layout with random images, labels (fine ids and 255) and depth; returns the depth root."""
    rng = np.random.default_rng(seed)
    ids = list(cs.MMSEG_171_IDS) + [255]
    h, w = size
    for split, n in (('train2017', n_train), ('val2017', n_val)):
        for d in ('images', 'annotations'):
            os.makedirs(os.path.join(root, d, split), exist_ok=True)
        os.makedirs(os.path.join(root, 'depth', split), exist_ok=True)
        for i in range(n):
            name = f'{i:012d}'
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
                os.path.join(root, 'images', split, name + '.jpg')
            )
            fine = rng.choice(np.array(ids[:20] + [255]), size=(h, w)).astype(np.uint8)
            if fmt == 'mmseg171':
                lab = np.full_like(fine, 255)
                for t, f in enumerate(cs.MMSEG_171_IDS):
                    lab[fine == f] = t
                Image.fromarray(lab).save(os.path.join(root, 'annotations', split, name + '_labelTrainIds.png'))
            else:
                Image.fromarray(fine).save(os.path.join(root, 'annotations', split, name + '.png'))
            if depth:
                yy = np.linspace(1.0, 5.0, h, dtype=np.float32)[:, None].repeat(w, 1)
                np.save(os.path.join(root, 'depth', split, name + '.npy'), yy)
    return os.path.join(root, 'depth')


@pytest.mark.parametrize('fmt', ['stuffthingmaps', 'mmseg171'])
def test_dataset_reads_both_layouts_alike(tmp_path, fmt):
    write_fake_cocostuff(str(tmp_path / 'a'), fmt='stuffthingmaps', depth=False)
    write_fake_cocostuff(str(tmp_path / 'b'), fmt=fmt, depth=True)
    a = cs.CocoStuff27(str(tmp_path / 'a'), 'val', size=32)
    b = cs.CocoStuff27(str(tmp_path / 'b'), 'val', size=32, depth_root=str(tmp_path / 'b' / 'depth'))
    assert len(a) == len(b) == 2
    x, y = a[1], b[1]
    assert x['img'].shape == (3, 32, 32) and x['label'].shape == (32, 32) and x['label'].dtype == torch.int64
    torch.testing.assert_close(x['img'], y['img'])
    torch.testing.assert_close(x['label'], y['label'])
    assert set(x['label'].unique().tolist()) <= set(range(27)) | {255}
    assert 'depth' not in x and y['depth'].shape == (32, 32)
    # resize-shorter-side + centre crop: the rows keep their order, so depth still grows downwards
    assert (y['depth'][1:, 0] >= y['depth'][:-1, 0]).all()


def test_image_list_and_errors(tmp_path):
    root = str(tmp_path)
    write_fake_cocostuff(root, n_train=3, depth=False)
    curated = os.path.join(root, 'curated', 'train2017')
    os.makedirs(curated)
    with open(os.path.join(curated, cs.FEATUP_IMAGE_LIST), 'w') as f:
        f.write('000000000002\n000000000000\n')
    assert cs.CocoStuff27(root, 'train').ids == ['000000000002', '000000000000']  # the curated list, in its order
    assert len(cs.CocoStuff27(root, 'train', image_list=None)) == 3
    with open(os.path.join(curated, cs.FEATUP_IMAGE_LIST), 'a') as f:
        f.write('000000000009\n')
    with pytest.raises(FileNotFoundError, match='have no label'):
        cs.CocoStuff27(root, 'train')
    with pytest.raises(FileNotFoundError, match='images/<split>'):
        cs.CocoStuff27(str(tmp_path / 'nowhere'), 'train')
    with pytest.raises(FileNotFoundError, match='depth folder'):
        cs.CocoStuff27(root, 'val', depth_root=str(tmp_path / 'nodepth'))
    with pytest.raises(ValueError, match='size'):
        cs.CocoStuff27(root, 'val', size=0)
