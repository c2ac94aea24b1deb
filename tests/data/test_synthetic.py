"""The generated dataset (featup_plugin.data.synthetic), its mmseg adapter and the generate_dataset.py CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from featup_plugin.data import synthetic
from featup_plugin.data.synthetic import (
    CLASSES,
    PALETTE,
    DatasetMismatchError,
    dataset_is_complete,
    generate_dataset,
    generate_scene,
    scene_seed,
)
from tests import ROOT

NUM_CLASSES = len(CLASSES)
THIN = [CLASSES.index(c) for c in ('wire', 'pole', 'vine')]
SMALL = [CLASSES.index(c) for c in ('pebble', 'marker')]
LARGE = [CLASSES.index(c) for c in ('grass', 'water', 'brick', 'sand')]


@pytest.fixture(scope='module')
def scenes():
    return [generate_scene(s, 128) for s in range(12)]


def covered_by_squares(mask: np.ndarray, k: int) -> np.ndarray:
    """Pixels of mask lying inside some k x k square entirely in mask (morphological opening)."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    if h < k or w < k:
        return out
    full = np.lib.stride_tricks.sliding_window_view(mask, (k, k)).all(axis=(-2, -1))
    for dy in range(k):
        for dx in range(k):
            out[dy : dy + h - k + 1, dx : dx + w - k + 1] |= full
    return out


def fits_disk(mask: np.ndarray, r2: int = 5) -> np.ndarray:
    """Pixels of mask whose whole disk dy^2 + dx^2 <= r2 (5 x 5 minus corners for r2=5) is in mask; the image
    border extends the mask (edge padding), so lines along the border are not made to look thinner."""
    r = int(np.sqrt(r2))
    h, w = mask.shape
    p = np.pad(mask, r, mode='edge')
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx <= r2:
                out &= p[r + dy : r + dy + h, r + dx : r + dx + w]
    return out


def tree_bytes(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, 'rb') as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


# ---------------------------------------------------------------------------------------------------------
# scenes


def test_classes_and_palette():
    assert len(CLASSES) >= 8 and len(set(CLASSES)) == len(CLASSES)
    assert all(isinstance(c, str) and c for c in CLASSES)
    assert len(PALETTE) == len(CLASSES)
    assert all(len(p) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in p) for p in PALETTE)
    assert len({tuple(p) for p in PALETTE}) == len(PALETTE)


def test_scene_is_deterministic_and_shaped():
    img, lab = generate_scene(7, (48, 80))
    assert img.shape == (48, 80, 3) and img.dtype == np.uint8
    assert lab.shape == (48, 80) and lab.dtype == np.uint8
    assert lab.max() < NUM_CLASSES
    img2, lab2 = generate_scene(7, (48, 80))
    assert np.array_equal(img, img2) and np.array_equal(lab, lab2)
    img3, lab3 = generate_scene(8, (48, 80))
    assert not np.array_equal(lab, lab3) and not np.array_equal(img, img3)
    # an int size is a square, and the same as the explicit pair
    a, b = generate_scene(3, 64), generate_scene(3, (64, 64))
    assert a[0].shape == (64, 64, 3) and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # the transposed size is a different scene of the transposed shape, not an error
    assert generate_scene(7, (80, 48))[1].shape == (80, 48)


def test_all_classes_appear_and_large_regions_are_large(scenes):
    seen = set()
    largest = np.zeros(NUM_CLASSES)
    for _, lab in scenes:
        frac = np.bincount(lab.ravel(), minlength=NUM_CLASSES) / lab.size
        seen |= set(np.flatnonzero(frac).tolist())
        largest = np.maximum(largest, frac)
    assert seen == set(range(NUM_CLASSES))
    assert all(largest[c] > 0.15 for c in LARGE), largest
    # thin and small classes are a minority of pixels: resolution matters for them
    assert all(largest[c] < 0.1 for c in THIN + SMALL), largest


def test_thin_structures_are_at_most_3px_wide(scenes):
    thin_pixels = inside_4x4 = inside_disk = one_px = 0
    for _, lab in scenes:
        for c in THIN:
            m = lab == c
            thin_pixels += m.sum()
            # a structure <= 3 px wide contains no 4x4 square (which a 4-px axis-aligned line does), except
            # where two of them cross, and no disk of diameter 5 (which 5-px lines at most angles do)
            inside_4x4 += covered_by_squares(m, 4).sum()
            inside_disk += fits_disk(m).sum()
            # 1-px wide parts: pixels in no 2x2 square of their class
            one_px += (m & ~covered_by_squares(m, 2)).sum()
    assert thin_pixels > 500
    assert inside_4x4 / thin_pixels < 0.05, inside_4x4 / thin_pixels
    assert inside_disk / thin_pixels < 0.01, inside_disk / thin_pixels
    assert one_px / thin_pixels > 0.2
    for _, lab in scenes[:6]:  # every scene has some thin structure
        assert np.isin(lab, THIN).sum() > 20


def test_small_objects_are_small(scenes):
    total = 0
    for _, lab in scenes:
        for c in SMALL:
            m = lab == c
            total += m.sum()
            assert not covered_by_squares(m, 11).any()  # nothing 11 x 11 or larger
    assert total > 200


def test_colour_alone_is_informative_but_not_a_lookup(scenes):
    """A nearest-mean colour classifier is far above chance but far from solving the task."""
    train, test = scenes[:6], scenes[6:]
    x = np.concatenate([i.reshape(-1, 3) for i, _ in train]).astype(np.float64)
    y = np.concatenate([lab.ravel() for _, lab in train])
    means = np.stack([x[y == c].mean(0) for c in range(NUM_CLASSES)])
    xt = np.concatenate([i.reshape(-1, 3) for i, _ in test]).astype(np.float64)
    yt = np.concatenate([lab.ravel() for _, lab in test])
    pred = ((xt[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    acc = np.mean([(pred[yt == c] == c).mean() for c in range(NUM_CLASSES) if (yt == c).any()])
    assert 2.0 / NUM_CLASSES < acc < 0.85, acc


def test_bad_scene_arguments():
    for size in (16, (31, 64), (64,), (64, 64, 3), 'x', (64.0, 64), True, 10000):
        with pytest.raises(ValueError, match='size'):
            generate_scene(0, size)
    for seed in (-1, 1.5, None, True):
        with pytest.raises(ValueError, match='seed'):
            generate_scene(seed, 32)
    with pytest.raises(ValueError, match='split'):
        scene_seed(0, 'test', 0)


# ---------------------------------------------------------------------------------------------------------
# dataset on disk


def test_dataset_layout_and_reproducibility(tmp_path):
    info = generate_dataset(tmp_path / 'a', num_train=4, num_val=2, size=(40, 56), seed=3)
    assert info['created'] and info['size'] == [40, 56]
    root = tmp_path / 'a'
    for split, n in (('train', 4), ('val', 2)):
        names = [f'{i:05d}.png' for i in range(n)]
        assert sorted(os.listdir(root / 'img_dir' / split)) == names
        assert sorted(os.listdir(root / 'ann_dir' / split)) == names
        for i, name in enumerate(names):
            img = Image.open(root / 'img_dir' / split / name)
            ann = Image.open(root / 'ann_dir' / split / name)
            assert img.mode == 'RGB' and ann.mode == 'L' and img.size == ann.size == (56, 40)
            ref_img, ref_lab = generate_scene(scene_seed(3, split, i), (40, 56))
            assert np.array_equal(np.asarray(img), ref_img) and np.array_equal(np.asarray(ann), ref_lab)
    meta = json.loads((root / 'meta.json').read_text())
    assert meta['classes'] == list(CLASSES) and meta['palette'] == PALETTE
    assert (meta['seed'], meta['size'], meta['num_train'], meta['num_val']) == (3, [40, 56], 4, 2)
    assert meta['version'] == synthetic.GENERATOR_VERSION
    assert not (root / synthetic.MARKER_FILE).exists()
    assert dataset_is_complete(root) and dataset_is_complete(root, num_train=4, size=(40, 56), seed=3)
    assert not dataset_is_complete(root, seed=4) and not dataset_is_complete(root, size=40)

    # the same seed gives byte-identical files, another seed other files; train and val differ
    generate_dataset(tmp_path / 'b', num_train=4, num_val=2, size=(40, 56), seed=3)
    generate_dataset(tmp_path / 'c', num_train=4, num_val=2, size=(40, 56), seed=4)
    a, b, c = (tree_bytes(tmp_path / n) for n in 'abc')
    assert a == b
    pngs = [k for k in a if k.endswith('.png')]
    assert all(a[k] != c[k] for k in pngs)
    assert a[os.path.join('img_dir', 'train', '00000.png')] != a[os.path.join('img_dir', 'val', '00000.png')]


def test_dataset_is_idempotent_and_rejects_other_parameters(tmp_path):
    root = tmp_path / 'ds'
    generate_dataset(root, num_train=2, num_val=1, size=32)
    stamp = {k: os.stat(os.path.join(root, k)).st_mtime_ns for k in tree_bytes(root)}
    info = generate_dataset(str(root), num_train=2, num_val=1, size=(32, 32))
    assert info['created'] is False
    assert {k: os.stat(os.path.join(root, k)).st_mtime_ns for k in tree_bytes(root)} == stamp

    with pytest.raises(DatasetMismatchError, match='num_train') as e:
        generate_dataset(root, num_train=3, num_val=1, size=32)
    assert isinstance(e.value, FileExistsError) and 'overwrite' in str(e.value)
    with pytest.raises(DatasetMismatchError, match='seed'):
        generate_dataset(root, num_train=2, num_val=1, size=32, seed=1)
    assert dataset_is_complete(root, num_train=2, seed=0)  # the failed calls changed nothing

    info = generate_dataset(root, num_train=3, num_val=1, size=32, seed=1, overwrite=True)
    assert info['created'] and dataset_is_complete(root, num_train=3, num_val=1, size=32, seed=1)
    assert len(os.listdir(root / 'img_dir' / 'train')) == 3

    # a shrinking overwrite leaves no stale files behind
    generate_dataset(root, num_train=1, num_val=1, size=32, seed=1, overwrite=True)
    assert os.listdir(root / 'img_dir' / 'train') == ['00000.png']


def test_incomplete_datasets_are_detected_and_redone(tmp_path, monkeypatch):
    root = tmp_path / 'ds'
    real_save = synthetic._save_png
    calls = []

    def crash_after_5(arr, path):
        calls.append(path)
        if len(calls) > 5:
            raise KeyboardInterrupt('simulated interruption')
        real_save(arr, path)

    monkeypatch.setattr(synthetic, '_save_png', crash_after_5)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(root, num_train=4, num_val=2, size=32)
    monkeypatch.setattr(synthetic, '_save_png', real_save)
    assert not (root / 'meta.json').exists() and not dataset_is_complete(root)
    assert generate_dataset(root, num_train=4, num_val=2, size=32)['created']  # redone without overwrite
    assert dataset_is_complete(root, num_train=4, num_val=2)

    # a missing file with a present meta.json: incomplete, and regenerated
    os.remove(root / 'ann_dir' / 'val' / '00001.png')
    assert not dataset_is_complete(root)
    assert generate_dataset(root, num_train=4, num_val=2, size=32)['created']
    assert dataset_is_complete(root)

    # files of another origin (no meta.json, no marker) are not overwritten silently
    other = tmp_path / 'other'
    (other / 'img_dir' / 'train').mkdir(parents=True)
    (other / 'img_dir' / 'train' / 'mine.png').write_bytes(b'x')
    with pytest.raises(DatasetMismatchError, match='meta.json'):
        generate_dataset(other, num_train=1, num_val=1, size=32)
    assert (other / 'img_dir' / 'train' / 'mine.png').exists()


@pytest.mark.parametrize(
    'kwargs, name',
    [
        (dict(num_train=0), 'num_train'),
        (dict(num_train=-3), 'num_train'),
        (dict(num_train=2.0), 'num_train'),
        (dict(num_train=True), 'num_train'),
        (dict(num_val=0), 'num_val'),
        (dict(size=31), 'size'),
        (dict(size=(64, 16)), 'size'),
        (dict(size=[1, 2, 3]), 'size'),
        (dict(seed=-1), 'seed'),
        (dict(seed='0'), 'seed'),
        (dict(overwrite='yes'), 'overwrite'),
    ],
)
def test_bad_dataset_arguments(tmp_path, kwargs, name):
    args = dict(num_train=1, num_val=1, size=32)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        generate_dataset(tmp_path / 'ds', **args)
    assert not (tmp_path / 'ds').exists()  # validated before anything is written


def test_bad_root_and_unknown_parameters(tmp_path):
    f = tmp_path / 'file'
    f.write_text('x')
    with pytest.raises(ValueError, match='root'):
        generate_dataset(f, num_train=1, num_val=1, size=32)
    with pytest.raises(ValueError, match='root'):
        generate_dataset('', num_train=1, num_val=1, size=32)
    with pytest.raises(ValueError, match='colour'):
        dataset_is_complete(tmp_path, colour=1)
    assert not dataset_is_complete(tmp_path / 'missing')


@pytest.mark.slow
def test_cli(tmp_path):
    out = tmp_path / 'cli'
    cmd = [
        sys.executable,
        os.path.join(ROOT, 'tools', 'dataset_converters', 'generate_dataset.py'),
        '--out',
        str(out),
        '--num-train',
        '3',
        '--num-val',
        '2',
        '--size',
        '40',
        '48',
        '--seed',
        '5',
    ]
    env = dict(os.environ, PYTHONPATH='')  # runs without the package on the path
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert 'generated' in res.stdout and '3 train + 2 val' in res.stdout and '40x48' in res.stdout
    assert dataset_is_complete(out, num_train=3, num_val=2, size=(40, 48), seed=5, extra_targets=True)

    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert res.returncode == 0 and 'already present' in res.stdout

    res = subprocess.run(cmd[:-1] + ['6'], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert res.returncode == 2 and 'seed' in res.stderr and '--overwrite' in res.stderr
    res = subprocess.run(
        cmd[:-1] + ['6', '--overwrite'], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env
    )
    assert res.returncode == 0 and dataset_is_complete(out, seed=6)
    res = subprocess.run(
        cmd[:-1] + ['7', '--overwrite', '--no-extra-targets'],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert res.returncode == 0 and dataset_is_complete(out, seed=7) and not dataset_is_complete(out, extra_targets=True)

    res = subprocess.run(cmd[:6] + ['--size', '8'], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert res.returncode == 2 and 'size' in res.stderr


@pytest.mark.slow
def test_synthetic_module_needs_no_framework(run_without_frameworks):
    res = run_without_frameworks("""
import featup_plugin.data.synthetic as s
import featup_plugin.data as d
import featup_plugin.evaluation as e
img, lab = s.generate_scene(1, 40)
assert 'FeatUpSyntheticDataset' not in d.__all__ and 'BoundaryFScore' not in e.__all__
print(e.boundary_f_score(lab, lab, len(s.CLASSES))['f_score'])
""")
    assert res.stdout.strip().endswith('1.0')


# ---------------------------------------------------------------------------------------------------------
# mmseg adapter


@pytest.fixture(scope='module')
def mmseg_registry():
    pytest.importorskip('mmseg')
    from mmseg.utils import register_all_modules

    register_all_modules()
    from mmseg.registry import DATASETS

    import featup_plugin  # noqa: F401

    return DATASETS


PIPELINE = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'), dict(type='PackSegInputs')]


def test_mmseg_dataset_builds_and_loads(tmp_path, mmseg_registry):
    root = tmp_path / 'ds'
    generate_dataset(root, num_train=3, num_val=2, size=(40, 56), seed=2)
    for split, n in (('train', 3), ('val', 2)):
        ds = mmseg_registry.build(
            dict(
                type='FeatUpSyntheticDataset',
                data_root=str(root),
                data_prefix=dict(img_path=f'img_dir/{split}', seg_map_path=f'ann_dir/{split}'),
                pipeline=PIPELINE,
            )
        )
        assert type(ds).__name__ == 'FeatUpSyntheticDataset' and len(ds) == n
        assert tuple(ds.metainfo['classes']) == CLASSES and ds.metainfo['palette'] == PALETTE
        assert ds.reduce_zero_label is False
        for i in range(n):
            sample = ds[i]
            img, lab = generate_scene(scene_seed(2, split, i), (40, 56))
            inputs = sample['inputs']
            assert tuple(inputs.shape) == (3, 40, 56)
            assert np.array_equal(inputs.numpy()[::-1].transpose(1, 2, 0), img)  # loaded as BGR
            gt = sample['data_samples'].gt_sem_seg.data
            assert tuple(gt.shape) == (1, 40, 56)
            assert np.array_equal(gt[0].numpy(), lab)
            assert sample['data_samples'].img_path.endswith(f'{i:05d}.png')


def test_mmseg_dataset_missing_data_names_the_command(tmp_path, mmseg_registry):
    root = tmp_path / 'nothing_here'
    cfg = dict(
        type='FeatUpSyntheticDataset',
        data_root=str(root),
        data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'),
        pipeline=PIPELINE,
    )
    with pytest.raises(FileNotFoundError, match='python3 tools/dataset_converters/generate_dataset.py --out') as e:
        mmseg_registry.build(cfg)
    assert str(root) in str(e.value)
    # images without annotations
    generate_dataset(root, num_train=1, num_val=1, size=32)
    import shutil

    shutil.rmtree(root / 'ann_dir' / 'train')
    with pytest.raises(FileNotFoundError, match='seg_map_path'):
        mmseg_registry.build(cfg)
    # an interrupted generation
    (root / synthetic.MARKER_FILE).write_text('{}')
    with pytest.raises(FileNotFoundError, match='--overwrite'):
        mmseg_registry.build(cfg)


# -- depth and image-level labels ------------------------------------------------------------------------------
GROUND = [CLASSES.index(c) for c in ('background', 'grass', 'water', 'sand')]
WIRE, POLE = CLASSES.index('wire'), CLASSES.index('pole')


@pytest.fixture(scope='module')
def targets():
    return [synthetic.generate_scene_targets(s, (96, 128)) for s in range(8)]


def test_targets_extend_the_scene_without_changing_it(targets):
    for s, t in enumerate(targets):
        image, label = generate_scene(s, (96, 128))
        assert np.array_equal(t['image'], image) and np.array_equal(t['label'], label)
        d = t['depth']
        assert d.dtype == np.float32 and d.shape == (96, 128) and np.isfinite(d).all()
        assert 0.1 <= d.min() and d.max() <= 65.0
        assert np.allclose(d * synthetic.DEPTH_SCALE, np.rint(d * synthetic.DEPTH_SCALE), atol=1e-2)  # mm steps
        assert t['classes'] == sorted(set(np.unique(label).tolist()))
    again = synthetic.generate_scene_targets(3, (96, 128))
    assert np.array_equal(again['depth'], targets[3]['depth'])
    assert not np.array_equal(targets[0]['depth'], targets[1]['depth'])


def test_depth_is_a_ground_plane_with_objects_in_front(targets):
    for t in targets:
        d, lab = t['depth'].astype(np.float64), t['label']
        ground = np.isin(lab, GROUND)
        # on the ground plane depth falls strictly from each row to the next one below it (camera above ground)
        both = ground[:-1] & ground[1:]
        assert both.any() and (d[:-1][both] > d[1:][both]).all()
        # wires hang in front: nearer than the ground two rows above them
        wire = (lab[2:] == WIRE) & ground[:-2]
        if wire.any():
            assert (d[2:][wire] < 0.85 * d[:-2][wire]).all()
        # poles stand on the ground: no farther than the ground beside them (up to the horizon's tilt)
        pole = (lab[:, 1:] == POLE) & ground[:, :-1]
        if pole.any():
            assert (d[:, 1:][pole] <= 1.05 * d[:, :-1][pole]).all()
        # the depth of a ground pixel is the plane's: 1 / depth is affine in (row, column)
        yy, xx = np.nonzero(ground)
        a = np.stack([yy, xx, np.ones_like(yy)], 1).astype(np.float64)
        coef, *_ = np.linalg.lstsq(a, 1.0 / d[ground], rcond=None)
        assert np.abs(a @ coef - 1.0 / d[ground]).max() < 1e-3


def test_dataset_with_depth_and_image_labels(tmp_path):
    root = tmp_path / 'd'
    generate_dataset(root, num_train=3, num_val=2, size=(40, 48), seed=2)
    meta = json.loads((root / 'meta.json').read_text())
    assert meta['extra_targets']['depth_dir'] == 'depth_dir' and meta['extra_targets']['depth_scale'] == 1000.0
    assert dataset_is_complete(root, extra_targets=True)
    for split, n in (('train', 3), ('val', 2)):
        labels = synthetic.read_image_labels(root, split)
        assert sorted(labels) == [f'{i:05d}.png' for i in range(n)]
        for i in range(n):
            t = synthetic.generate_scene_targets(scene_seed(2, split, i), (40, 48))
            png = Image.open(root / 'depth_dir' / split / f'{i:05d}.png')
            assert png.size == (48, 40) and np.asarray(png).dtype == np.uint16
            assert np.array_equal(synthetic.read_depth(root / 'depth_dir' / split / f'{i:05d}.png'), t['depth'])
            assert labels[f'{i:05d}.png'] == t['classes']
    # a missing depth file makes the dataset incomplete; the next call regenerates it
    os.remove(root / 'depth_dir' / 'val' / '00001.png')
    assert not dataset_is_complete(root)
    assert generate_dataset(root, num_train=3, num_val=2, size=(40, 48), seed=2)['created']
    assert dataset_is_complete(root, extra_targets=True)
    with pytest.raises(ValueError, match='not a 16-bit single-channel depth PNG'):
        synthetic.read_depth(root / 'img_dir' / 'val' / '00000.png')
    with pytest.raises(ValueError, match='extra_targets must be a bool'):
        generate_dataset(root, num_train=3, num_val=2, size=(40, 48), seed=2, extra_targets='yes')


def test_old_layout_still_loads_and_gains_targets_in_place(tmp_path):
    root = tmp_path / 'old'
    generate_dataset(root, num_train=2, num_val=1, size=32, extra_targets=False)
    assert not (root / 'depth_dir').exists() and not (root / 'image_labels').exists()
    assert 'extra_targets' not in json.loads((root / 'meta.json').read_text())
    assert dataset_is_complete(root) and not dataset_is_complete(root, extra_targets=True)
    with pytest.raises(FileNotFoundError, match='extra_targets=True'):
        synthetic.read_image_labels(root, 'train')
    before = tree_bytes(root)
    info = generate_dataset(root, num_train=2, num_val=1, size=32)
    assert not info['created'] and info['added_targets']
    after = tree_bytes(root)
    assert all(after[k] == v for k, v in before.items() if k != 'meta.json')  # images untouched
    assert dataset_is_complete(root, extra_targets=True)
    assert 'added_targets' not in generate_dataset(root, num_train=2, num_val=1, size=32)
    # regenerating without extras removes them (no stale depth next to new images)
    generate_dataset(root, num_train=2, num_val=1, size=32, seed=1, overwrite=True, extra_targets=False)
    assert not os.listdir(root / 'depth_dir') and not os.listdir(root / 'image_labels')
