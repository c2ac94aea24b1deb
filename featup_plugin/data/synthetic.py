"""A generated semantic-segmentation dataset in which feature *resolution* matters: textured regions, 1-3 px thin
structures and 2-10 px objects with overlapping colours, every scene determined by ``(seed, size)``, labels exactly
consistent with the image. Framework-free (numpy + PIL only); the MMSegmentation adapter lives in
:mod:`featup_plugin.mmseg.datasets.featup_synthetic`.

Derivation / details: docs/data.md
"""

import json
import math
import os
import shutil
import time
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    'CLASSES',
    'PALETTE',
    'GENERATOR_VERSION',
    'DatasetMismatchError',
    'generate_scene',
    'generate_scene_targets',
    'image_labels',
    'scene_seed',
    'read_depth',
    'read_image_labels',
    'generate_dataset',
    'dataset_is_complete',
    'read_meta',
]

#: Bumped whenever the output of :func:`generate_scene` changes for a given ``(seed, size)``.
GENERATOR_VERSION = 1
#: Bumped whenever the depth of :func:`generate_scene_targets` changes for a given ``(seed, size)``.
DEPTH_VERSION = 1
#: Depth PNGs store millimetres as uint16 (0.001 m steps, up to 65.535 m).
DEPTH_SCALE = 1000.0

CLASSES = ('background', 'grass', 'water', 'brick', 'sand', 'wire', 'pole', 'vine', 'pebble', 'marker')
#: Display colours (MMSegmentation's ``palette``), one ``[r, g, b]`` per class; not the rendered colours.
PALETTE = [
    [120, 120, 120],
    [40, 170, 40],
    [30, 90, 220],
    [170, 60, 40],
    [230, 200, 120],
    [10, 10, 10],
    [200, 200, 255],
    [120, 255, 0],
    [140, 80, 20],
    [255, 0, 200],
]

BACKGROUND, GRASS, WATER, BRICK, SAND, WIRE, POLE, VINE, PEBBLE, MARKER = range(len(CLASSES))
LARGE_CLASSES = (GRASS, WATER, BRICK, SAND)
THIN_CLASSES = (WIRE, POLE, VINE)
SMALL_CLASSES = (PEBBLE, MARKER)

META_FILE = 'meta.json'
MARKER_FILE = '.generating.json'  # present while a generation runs: an interrupted run leaves it behind
SPLITS = ('train', 'val')
MIN_SIZE = 32
MAX_SIZE = 8192
MAX_COUNT = 100000  # file names have 5 digits

SizeLike = Union[int, Sequence[int]]


class DatasetMismatchError(FileExistsError):
    """``root`` already holds a dataset (or other files) that does not match the requested parameters."""


# ----------------------------------------------------------------------------------------------------------
# argument checks


def _check_size(size: SizeLike, name: str = 'size') -> Tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        hw = (int(size), int(size))
    else:
        try:
            hw = tuple(size)
        except TypeError:
            raise ValueError(f'{name} must be an int or a pair (H, W) of ints, got {size!r}') from None
        if len(hw) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in hw):
            raise ValueError(f'{name} must be an int or a pair (H, W) of ints, got {size!r}')
        hw = (int(hw[0]), int(hw[1]))
    if not all(MIN_SIZE <= v <= MAX_SIZE for v in hw):
        raise ValueError(f'{name} must be between {MIN_SIZE} and {MAX_SIZE} pixels per side, got {size!r}')
    return hw


def _check_seed(seed, name: str = 'seed') -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f'{name} must be a non-negative int, got {seed!r}')
    return int(seed)


def _check_count(value, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 1 <= value <= MAX_COUNT:
        raise ValueError(f'{name} must be an int between 1 and {MAX_COUNT}, got {value!r}')
    return int(value)


# ----------------------------------------------------------------------------------------------------------
# geometry


class _Canvas:
    """Instance map being drawn (PIL mode 'I'); instance 0 is the background."""

    def __init__(self, h: int, w: int):
        self.img = Image.new('I', (w, h), 0)
        self.draw = ImageDraw.Draw(self.img)
        self.classes: List[int] = [BACKGROUND]

    def new(self, cls: int) -> int:
        self.classes.append(cls)
        return len(self.classes) - 1


def _pts(xs, ys) -> List[Tuple[float, float]]:
    return [(float(x), float(y)) for x, y in zip(xs, ys)]


def _draw_blob(cv: _Canvas, rng: np.random.Generator, cls: int, h: int, w: int) -> None:
    cx = rng.uniform(-0.1, 1.1) * w
    cy = rng.uniform(-0.1, 1.1) * h
    r0 = rng.uniform(0.18, 0.45) * min(h, w)
    aspect = rng.uniform(0.7, 1.4)
    theta = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 6):
        r += rng.uniform(0, 0.3 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = r0 * np.maximum(r, 0.3)
    cv.draw.polygon(_pts(cx + aspect * r * np.cos(theta), cy + r * np.sin(theta) / aspect), fill=cv.new(cls))


def _draw_band(cv: _Canvas, rng: np.random.Generator, cls: int, h: int, w: int) -> None:
    vertical = rng.random() < 0.3
    along, across = (h, w) if vertical else (w, h)
    t = np.linspace(-2, along + 2, 48)
    edge = rng.uniform(0.3, 0.8) * across + np.zeros_like(t)
    for k in (1, 2, 4):
        edge += rng.uniform(0, 0.06) * across / k * np.sin(2 * np.pi * k * t / along + rng.uniform(0, 2 * np.pi))
    far = -2.0 if rng.random() < 0.5 else across + 2.0
    t = np.concatenate([t, [along + 2, -2]])
    edge = np.concatenate([edge, [far, far]])
    xs, ys = (edge, t) if vertical else (t, edge)
    cv.draw.polygon(_pts(xs, ys), fill=cv.new(cls))


def _count(rng: np.random.Generator, mean: float, minimum: int = 1) -> int:
    return max(minimum, int(rng.poisson(mean)))


def _draw_pole(cv: _Canvas, rng: np.random.Generator, h: int, w: int, scale: float) -> None:
    x0 = rng.uniform(0.05, 0.95) * w
    top = rng.uniform(-0.1, 0.45) * h
    bottom = rng.uniform(0.65, 1.1) * h
    lean = rng.uniform(-0.08, 0.08) * (bottom - top)
    width = int(rng.choice([1, 2, 3], p=[0.2, 0.4, 0.4]))
    ident = cv.new(POLE)
    cv.draw.line([(x0, top), (x0 + lean, bottom)], fill=ident, width=width)
    if rng.random() < 0.4:  # cross-bar near the top
        f = rng.uniform(0.03, 0.2)
        y = top + f * (bottom - top)
        x = x0 + f * lean
        half = rng.uniform(4, 12) * scale
        cv.draw.line([(x - half, y), (x + half, y)], fill=ident, width=int(rng.integers(1, 3)))


def _draw_wire(cv: _Canvas, rng: np.random.Generator, h: int, w: int) -> None:
    y0, y1 = rng.uniform(0.03, 0.65, size=2) * h
    sag = rng.uniform(0.0, 0.15) * h
    t = np.linspace(0, 1, 40)
    xs = -2 + t * (w + 4)
    ys = y0 + (y1 - y0) * t + 4 * sag * t * (1 - t)
    width = int(rng.choice([1, 2], p=[0.7, 0.3]))
    cv.draw.line(_pts(xs, ys), fill=cv.new(WIRE), width=width)


def _draw_vine(cv: _Canvas, rng: np.random.Generator, h: int, w: int, scale: float) -> None:
    x, y = rng.uniform(0, w), rng.uniform(0, h)
    heading = rng.uniform(0, 2 * np.pi)
    turn = 0.0
    steps = int(rng.uniform(15, 45) * scale)
    step = 2.5
    pts = [(x, y)]
    for _ in range(steps):
        turn = float(np.clip(turn + rng.normal(0, 0.12), -0.3, 0.3))
        heading += turn
        x += step * math.cos(heading)
        y += step * math.sin(heading)
        pts.append((x, y))
    width = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    cv.draw.line(pts, fill=cv.new(VINE), width=width, joint='curve' if width > 1 else None)


def _draw_pebble(cv: _Canvas, rng: np.random.Generator, h: int, w: int) -> None:
    d = int(rng.choice(np.arange(2, 11), p=_SMALL_SIZE_P))
    dy = max(2, int(round(d * rng.uniform(0.6, 1.0))))
    if rng.random() < 0.5:
        d, dy = dy, d
    x, y = rng.uniform(-1, w - d + 1), rng.uniform(-1, h - dy + 1)
    cv.draw.ellipse([x, y, x + d - 1, y + dy - 1], fill=cv.new(PEBBLE))


def _draw_marker(cv: _Canvas, rng: np.random.Generator, h: int, w: int) -> None:
    m = int(rng.choice(np.arange(3, 11), p=_MARKER_SIZE_P))
    x, y = float(rng.integers(-1, w - m + 2)), float(rng.integers(-1, h - m + 2))
    e = m - 1  # last pixel of the m x m box
    ident = cv.new(MARKER)
    shape = int(rng.integers(0, 4))
    if shape == 0:
        cv.draw.rectangle([x, y, x + e, y + e], fill=ident)
    elif shape == 1:
        cv.draw.polygon([(x + e / 2, y), (x + e, y + e / 2), (x + e / 2, y + e), (x, y + e / 2)], fill=ident)
    elif shape == 2:
        t = max(1, m // 3)
        a = (m - t) // 2
        cv.draw.rectangle([x + a, y, x + a + t - 1, y + e], fill=ident)
        cv.draw.rectangle([x, y + a, x + e, y + a + t - 1], fill=ident)
    else:
        cv.draw.polygon([(x + e / 2, y), (x + e, y + e), (x, y + e)], fill=ident)


def _size_p(sizes: np.ndarray) -> np.ndarray:
    p = 1.0 / sizes
    return p / p.sum()


_SMALL_SIZE_P = _size_p(np.arange(2, 11, dtype=np.float64))
_MARKER_SIZE_P = _size_p(np.arange(3, 11, dtype=np.float64))


def _geometry(rng: np.random.Generator, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """Returns the instance map [H, W] (int32) and the class of each instance id."""
    cv = _Canvas(h, w)
    scale = min(h, w) / 128.0
    area = h * w / 128.0**2
    for _ in range(int(rng.integers(2, 5))):
        cls = int(rng.choice(LARGE_CLASSES))
        (_draw_band if rng.random() < 0.35 else _draw_blob)(cv, rng, cls, h, w)
    for _ in range(_count(rng, 1.2 * w / 128.0)):
        _draw_pole(cv, rng, h, w, scale)
    for _ in range(_count(rng, 1.2 * h / 128.0)):
        _draw_wire(cv, rng, h, w)
    for _ in range(_count(rng, 1.5 * area)):
        _draw_vine(cv, rng, h, w, scale)
    small = [PEBBLE] * _count(rng, 8 * area) + [MARKER] * _count(rng, 4 * area)
    for cls in rng.permutation(small):
        (_draw_pebble if cls == PEBBLE else _draw_marker)(cv, rng, h, w)
    return np.asarray(cv.img, dtype=np.int32), np.asarray(cv.classes, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------------
# appearance


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell_y: float, cell_x: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise: a random grid upsampled bicubically (cells of cell_y x cell_x px)."""
    gh, gw = int(math.ceil(h / cell_y)) + 3, int(math.ceil(w / cell_x)) + 3
    grid = Image.fromarray(rng.standard_normal((gh, gw)).astype(np.float32), mode='F')
    big = np.asarray(grid.resize((int(gw * cell_x), int(gh * cell_y)), Image.BICUBIC), dtype=np.float32)
    oy, ox = int(cell_y), int(cell_x)
    out = big[oy : oy + h, ox : ox + w]
    return (out - out.mean()) / (out.std() + 1e-6)


def _fields(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Per-class colour fields [C, H, W, 3] (float32, before per-instance and per-image jitter)."""
    f = np.empty((len(CLASSES), h, w, 3), np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    white = rng.standard_normal((h, w)).astype(np.float32)

    def rgb(v):
        return np.asarray(v, np.float32)

    # background: blotchy, low-frequency brown-grey
    f[BACKGROUND] = (
        rgb([125, 115, 100])
        + 22 * _smooth_noise(rng, h, w, 16, 16)[..., None]
        + 10 * _smooth_noise(rng, h, w, 6, 6)[..., None] * rgb([1.0, 0.6, 0.2])
    )
    # grass: vertical blade streaks, high-frequency
    f[GRASS] = (
        rgb([70, 125, 45])
        + 28 * _smooth_noise(rng, h, w, 5, 1.2)[..., None] * rgb([0.5, 1.0, 0.4])
        + 10 * _smooth_noise(rng, h, w, 24, 24)[..., None]
    )
    # water: horizontal waves
    lam = rng.uniform(4.0, 7.0)
    phase = 2 * np.pi * (yy / lam + 0.25 * _smooth_noise(rng, h, w, 12, 12)) + 0.6 * np.sin(xx / rng.uniform(6, 12))
    f[WATER] = rgb([45, 85, 150]) + 22 * np.sin(phase)[..., None] * rgb([0.6, 0.8, 1.0])
    # brick: running-bond grid with 1-px mortar, per-brick colour jitter
    bh = int(rng.integers(4, 7))
    bw = 2 * bh + int(rng.integers(0, 4))
    row = (yy // bh).astype(np.int64)
    shift = (row % 2) * (bw // 2) + int(rng.integers(0, bw))
    col = ((xx + shift) // bw).astype(np.int64)
    jitter = rng.normal(0, 14, size=(int(row.max()) + 1, int(col.max()) + 1, 3)).astype(np.float32)
    mortar = ((yy % bh) == 0) | (((xx + shift) % bw) == 0)
    f[BRICK] = np.where(mortar[..., None], rgb([175, 170, 160]), rgb([150, 65, 45]) + jitter[row, col])
    # sand: pale, fine grain with dark and bright speckles
    u = rng.random((h, w))
    speckle = np.where(u < 0.08, -60.0, np.where(u > 0.95, 30.0, 0.0)).astype(np.float32)
    f[SAND] = rgb([195, 170, 125]) + 10 * _smooth_noise(rng, h, w, 12, 12)[..., None] + (speckle + 6 * white)[..., None]
    # thin structures: flat colours (their instance jitter comes later)
    f[WIRE] = rgb([40, 38, 42]) + 5 * white[..., None]
    f[POLE] = rgb([145, 145, 150]) + 8 * _smooth_noise(rng, h, w, 8, 2)[..., None]
    f[VINE] = rgb([60, 108, 35]) + 10 * white[..., None] * rgb([0.5, 1.0, 0.5])
    # small objects: colour comes from the instance
    f[PEBBLE] = 6 * white[..., None]
    f[MARKER] = 0.0
    return f


_PEBBLE_COLOURS = np.asarray([[110, 90, 70], [90, 90, 95], [140, 120, 95], [75, 60, 50], [160, 150, 140]], np.float32)
_MARKER_COLOURS = np.asarray(
    [[220, 40, 40], [240, 140, 20], [210, 40, 190], [230, 220, 40], [40, 200, 220], [245, 245, 245]], np.float32
)
_INSTANCE_STD = {BACKGROUND: 6, GRASS: 10, WATER: 10, BRICK: 8, SAND: 10, WIRE: 8, POLE: 22, VINE: 14}


def _instance_colours(rng: np.random.Generator, classes: np.ndarray) -> np.ndarray:
    out = np.zeros((len(classes), 3), np.float32)
    for i, c in enumerate(classes.tolist()):
        if c == PEBBLE:
            out[i] = _PEBBLE_COLOURS[rng.integers(len(_PEBBLE_COLOURS))] + rng.normal(0, 12, 3)
        elif c == MARKER:
            out[i] = _MARKER_COLOURS[rng.integers(len(_MARKER_COLOURS))] + rng.normal(0, 15, 3)
        else:
            out[i] = rng.normal(0, _INSTANCE_STD[c]) + rng.normal(0, _INSTANCE_STD[c] / 3, 3)
    return out


def _render(seed: int, size: SizeLike, with_depth: bool):
    h, w = _check_size(size)
    seed = _check_seed(seed)
    rng = np.random.default_rng(seed)
    inst, inst_cls = _geometry(rng, h, w)
    label = inst_cls[inst]
    fields = _fields(rng, h, w)
    yy, xx = np.indices((h, w))
    img = fields[label, yy, xx] + _instance_colours(rng, inst_cls)[inst]
    gain = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    img = img * gain + np.float32(rng.uniform(-15, 15)) + rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    # depth from its own stream, so images and labels are those of generate_scene whatever depth does
    depth = _depth(np.random.default_rng([seed, 0x64657074]), inst, inst_cls) if with_depth else None
    return image, np.ascontiguousarray(label), depth


def generate_scene(seed: int, size: SizeLike = (128, 128)) -> Tuple[np.ndarray, np.ndarray]:
    """One scene, fully determined by ``(seed, size)``.

    Args:
        seed: non-negative int.
        size: ``(H, W)`` or one int for a square; each side in [32, 8192].

    Returns:
        ``(image, label)``: ``uint8 [H, W, 3]`` RGB and ``uint8 [H, W]`` with values in ``range(len(CLASSES))``.
    """
    image, label, _ = _render(seed, size, False)
    return image, label


def generate_scene_targets(seed: int, size: SizeLike = (128, 128)) -> dict:
    """The scene of :func:`generate_scene` with all its targets: ``image``, ``label`` (as there), ``depth``
    (``float32 [H, W]``, metres, quantised to :data:`DEPTH_SCALE` steps as stored on disk) and ``classes`` (the
    image-level labels, :func:`image_labels` of ``label``). See docs/data.md#depth for the scene model."""
    image, label, depth = _render(seed, size, True)
    return dict(image=image, label=label, depth=_from_mm(_to_mm(depth)), classes=image_labels(label))


def _to_mm(depth: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(depth.astype(np.float64) * DEPTH_SCALE), 0, 65535).astype(np.uint16)


def _from_mm(mm: np.ndarray) -> np.ndarray:
    return mm.astype(np.float32) / np.float32(DEPTH_SCALE)


def image_labels(label: np.ndarray) -> List[int]:
    """The classes present in a label map (sorted class indices; ``255`` / ignore values are not classes)."""
    present = np.bincount(np.asarray(label).ravel(), minlength=256)[: len(CLASSES)]
    return [int(c) for c in np.flatnonzero(present)]


# depth: a ground plane seen from above its horizon, objects standing on it or hanging in front of it
_ON_GROUND = (BACKGROUND, GRASS, WATER, SAND)  # per-pixel ground depth
_STANDING = (BRICK, POLE)  # upright: the ground depth where they touch it (their lowest visible row)
_LYING = (PEBBLE, MARKER)  # small objects on the ground: just in front of it


def _depth(rng: np.random.Generator, inst: np.ndarray, inst_cls: np.ndarray) -> np.ndarray:
    h, w = inst.shape
    horizon = rng.uniform(0.3, 1.0) * h  # rows above the top edge: the whole image is ground
    roll = rng.uniform(-0.15, 0.15)  # horizon tilt, in image heights per image width
    near = rng.uniform(2.0, 4.0)  # metres at the bottom centre
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5

    def ground(y, x):  # a plane: depth is inversely proportional to the distance below the horizon line
        return near * (h + horizon) / (y + horizon + roll * h * (x - w / 2) / w)

    g = ground(yy, xx)
    n = len(inst_cls)
    ids = inst.ravel()
    count = np.bincount(ids, minlength=n)
    mean_x = np.bincount(ids, weights=xx.ravel(), minlength=n) / np.maximum(count, 1)
    mean_y = np.bincount(ids, weights=yy.ravel(), minlength=n) / np.maximum(count, 1)
    bottom = np.full(n, -1.0)
    np.maximum.at(bottom, ids, yy.ravel())
    wire_factor = rng.uniform(0.45, 0.8, size=n)  # drawn for every instance: stable under other changes
    per_inst = np.empty(n)
    for i, c in enumerate(inst_cls.tolist()):
        if c in _STANDING:
            per_inst[i] = ground(bottom[i], mean_x[i])
        elif c in _LYING:
            per_inst[i] = 0.99 * ground(bottom[i], mean_x[i])
        elif c == WIRE:  # hanging in front of the ground behind it
            per_inst[i] = wire_factor[i] * ground(mean_y[i], mean_x[i])
        else:
            per_inst[i] = np.nan  # per-pixel
    depth = per_inst[inst]
    cls = inst_cls[inst]
    on_ground = np.isin(cls, _ON_GROUND)
    depth[on_ground] = g[on_ground]
    vine = cls == VINE
    depth[vine] = 0.995 * g[vine]  # lying on the ground
    return np.clip(depth, 0.1, 65.0).astype(np.float32)


def scene_seed(seed: int, split: str, index: int) -> int:
    """Seed of image ``index`` of ``split`` in a dataset generated with ``seed`` (independent streams)."""
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    state = np.random.SeedSequence([_check_seed(seed), SPLITS.index(split), _check_seed(index, 'index')])
    lo, hi = state.generate_state(2, np.uint32).tolist()
    return (hi << 32) | lo


# ----------------------------------------------------------------------------------------------------------
# dataset on disk


def _params(num_train, num_val, size, seed) -> dict:
    h, w = _check_size(size)
    return dict(
        version=GENERATOR_VERSION,
        size=[h, w],
        seed=_check_seed(seed),
        num_train=_check_count(num_train, 'num_train'),
        num_val=_check_count(num_val, 'num_val'),
    )


def _split_dirs(root: str, split: str) -> Tuple[str, str]:
    return os.path.join(root, 'img_dir', split), os.path.join(root, 'ann_dir', split)


def _names(n: int) -> List[str]:
    return [f'{i:05d}.png' for i in range(n)]


def read_meta(root: Union[str, os.PathLike]):
    """The parsed ``root/meta.json``, or None if it is missing or unreadable."""
    try:
        with open(os.path.join(os.fspath(root), META_FILE)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


DEPTH_DIR = 'depth_dir'
LABELS_DIR = 'image_labels'


def _extras_meta() -> dict:
    return dict(depth_version=DEPTH_VERSION, depth_scale=DEPTH_SCALE, depth_dir=DEPTH_DIR, image_labels=LABELS_DIR)


def _has_extras(meta: dict) -> bool:
    return meta.get('extra_targets') == _extras_meta()


def _extras_complete(root: str, meta: dict) -> bool:
    for split in SPLITS:
        want = set(_names(int(meta[f'num_{split}'])))
        try:
            have = {n for n in os.listdir(os.path.join(root, DEPTH_DIR, split)) if n.endswith('.png')}
        except OSError:
            return False
        if have != want or set(read_image_labels(root, split)) != want:
            return False
    return True


def _files_complete(root: str, meta: dict) -> bool:
    if 'extra_targets' in meta and not _extras_complete(root, meta):
        return False
    for split in SPLITS:
        want = set(_names(int(meta[f'num_{split}'])))
        for d in _split_dirs(root, split):
            try:
                have = {n for n in os.listdir(d) if n.endswith('.png')}
            except OSError:
                return False
            if have != want:
                return False
    return True


def _mismatch(meta: dict, params: dict) -> Dict[str, tuple]:
    return {k: (meta.get(k), v) for k, v in params.items() if meta.get(k) != v}


def dataset_is_complete(root: Union[str, os.PathLike], **params) -> bool:
    """Whether ``root`` holds a complete generated dataset, matching ``params`` when given.

    ``params`` may name any of ``num_train``, ``num_val``, ``size``, ``seed`` (validated like
    :func:`generate_dataset`); those not given are not compared. The generator version must match always.
    ``extra_targets=True`` also asks for the depth maps and image-level labels (of the current depth version).
    """
    extras = params.pop('extra_targets', False)
    unknown = set(params) - {'num_train', 'num_val', 'size', 'seed'}
    if unknown:
        raise ValueError(
            f'unknown parameter(s) {sorted(unknown)}; expected num_train, num_val, size, seed, extra_targets'
        )
    root = os.fspath(root)
    meta = read_meta(root)
    if meta is None or os.path.exists(os.path.join(root, MARKER_FILE)):
        return False
    want = {'version': GENERATOR_VERSION}
    if 'size' in params:
        want['size'] = list(_check_size(params['size']))
    if 'seed' in params:
        want['seed'] = _check_seed(params['seed'])
    for k in ('num_train', 'num_val'):
        if k in params:
            want[k] = _check_count(params[k], k)
    try:
        if extras and not _has_extras(meta):
            return False
        return not _mismatch(meta, want) and _files_complete(root, meta)
    except (KeyError, TypeError, ValueError, OSError):
        return False


def read_depth(path: Union[str, os.PathLike]) -> np.ndarray:
    """A depth PNG of the generated dataset as ``float32 [H, W]`` metres."""
    with Image.open(os.fspath(path)) as im:
        mm = np.asarray(im)
    if mm.dtype not in (np.uint16, np.int32) or mm.ndim != 2:
        raise ValueError(f'{os.fspath(path)} is not a 16-bit single-channel depth PNG (got {mm.dtype} {mm.shape})')
    return _from_mm(mm)


def read_image_labels(root: Union[str, os.PathLike], split: str) -> Dict[str, List[int]]:
    """``{file name: sorted class indices present}`` of a split (``root/image_labels/<split>.json``)."""
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    path = os.path.join(os.fspath(root), LABELS_DIR, f'{split}.json')
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f'{path} is missing: generate the dataset with extra targets (generate_dataset(..., extra_targets=True))'
        ) from None
    return {str(k): [int(c) for c in v] for k, v in data.items()}


def _write_atomic(path: str, write) -> None:
    tmp = path + '.tmp'
    write(tmp)
    os.replace(tmp, path)


def _save_png(arr: np.ndarray, path: str) -> None:
    _write_atomic(path, lambda p: Image.fromarray(arr).save(p, format='PNG'))


def _save_depth(depth: np.ndarray, path: str) -> None:
    mm = _to_mm(depth)
    _write_atomic(path, lambda p: Image.fromarray(mm).save(p, format='PNG'))


def _save_labels(root: str, split: str, labels: Dict[str, List[int]]) -> None:
    os.makedirs(os.path.join(root, LABELS_DIR), exist_ok=True)
    _write_json(labels, os.path.join(root, LABELS_DIR, f'{split}.json'))


def _write_extras(root: str, params: dict) -> None:
    """Depth maps and image-level labels for an existing dataset (its images are not rewritten)."""
    for split in SPLITS:
        d = os.path.join(root, DEPTH_DIR, split)
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
        labels = {}
        for i, name in enumerate(_names(params[f'num_{split}'])):
            t = generate_scene_targets(scene_seed(params['seed'], split, i), tuple(params['size']))
            _save_depth(t['depth'], os.path.join(d, name))
            labels[name] = t['classes']
        _save_labels(root, split, labels)


def _write_json(obj: dict, path: str) -> None:

    def write(p):
        with open(p, 'w') as f:
            json.dump(obj, f, indent=2)
            f.write('\n')

    _write_atomic(path, write)


def generate_dataset(
    root: Union[str, os.PathLike],
    num_train: int = 200,
    num_val: int = 50,
    size: SizeLike = 128,
    seed: int = 0,
    overwrite: bool = False,
    extra_targets: bool = True,
) -> dict:
    """Writes (or finds) the dataset under ``root`` and returns a summary dict.

    ``extra_targets``: also write per-pixel depth (``root/depth_dir/<split>/*.png``) and image-level labels
    (``root/image_labels/<split>.json``); added to an existing complete dataset of the same parameters without
    rewriting its images (summary ``added_targets=True``). Without it the layout is the original one.

    Idempotent: if ``root`` already holds a complete dataset with the same parameters (and generator version)
    nothing is written and the summary has ``created=False``. If ``root`` holds a different dataset, or other
    files in ``img_dir``/``ann_dir``, :class:`DatasetMismatchError` (a ``FileExistsError``) is raised unless
    ``overwrite=True``, which deletes ``root/{img_dir,ann_dir,depth_dir}/{train,val}``,
    ``root/image_labels/{train,val}.json`` and ``root/meta.json`` first (nothing else). A run that was interrupted
    (it leaves ``.generating.json`` behind and no ``meta.json``) is redone automatically. ``meta.json`` is written last.

    Raises:
        ValueError: a bad argument (the message names it).
    """
    if not isinstance(root, (str, os.PathLike)) or not os.fspath(root):
        raise ValueError(f'root must be a non-empty path, got {root!r}')
    if not isinstance(overwrite, bool):
        raise ValueError(f'overwrite must be a bool, got {overwrite!r}')
    if not isinstance(extra_targets, bool):
        raise ValueError(f'extra_targets must be a bool, got {extra_targets!r}')
    params = _params(num_train, num_val, size, seed)
    root = os.path.abspath(os.fspath(root))
    if os.path.exists(root) and not os.path.isdir(root):
        raise ValueError(f'root {root!r} exists and is not a directory')

    meta = read_meta(root)
    marker = os.path.join(root, MARKER_FILE)
    summary = dict(root=root, **params, classes=list(CLASSES))
    if meta is not None and not os.path.exists(marker):
        diff = _mismatch(meta, params)
        complete = not diff and _files_complete(root, meta)
        if complete and extra_targets and not _has_extras(meta):
            start = time.perf_counter()
            _write_extras(root, params)
            meta = {k: v for k, v in meta.items() if k != 'extra_targets'}
            _write_json(dict(meta, extra_targets=_extras_meta()), os.path.join(root, META_FILE))
            return dict(summary, created=False, added_targets=True, seconds=time.perf_counter() - start)
        if complete:
            return dict(summary, created=False, seconds=0.0)
        if diff and not overwrite:
            lines = ', '.join(f'{k}: found {a!r}, requested {b!r}' for k, (a, b) in diff.items())
            raise DatasetMismatchError(
                f'{root} already holds a generated dataset with other parameters ({lines}). '
                'Pass overwrite=True (--overwrite) to replace it, or use another root.'
            )
    elif meta is None and not os.path.exists(marker) and not overwrite:
        foreign = [d for s in SPLITS for d in _split_dirs(root, s) if os.path.isdir(d) and os.listdir(d)]
        if foreign:
            raise DatasetMismatchError(
                f'{root} has files in {foreign} but no {META_FILE}: not a dataset made by '
                'this generator. Pass overwrite=True (--overwrite) to replace them.'
            )

    start = time.perf_counter()
    os.makedirs(root, exist_ok=True)
    _write_json(dict(params, started=True), marker)
    meta_path = os.path.join(root, META_FILE)
    if os.path.exists(meta_path):
        os.remove(meta_path)
    h, w = params['size']
    for split in SPLITS:
        depth_dir = os.path.join(root, DEPTH_DIR, split)
        for d in _split_dirs(root, split) + (depth_dir,):
            if os.path.isdir(d):
                shutil.rmtree(d)
            if d != depth_dir or extra_targets:
                os.makedirs(d)
        stale = os.path.join(root, LABELS_DIR, f'{split}.json')
        if os.path.exists(stale):
            os.remove(stale)
        img_dir, ann_dir = _split_dirs(root, split)
        labels = {}
        for i, name in enumerate(_names(params[f'num_{split}'])):
            image, label, depth = _render(scene_seed(params['seed'], split, i), (h, w), extra_targets)
            _save_png(image, os.path.join(img_dir, name))
            _save_png(label, os.path.join(ann_dir, name))
            if extra_targets:
                _save_depth(depth, os.path.join(root, DEPTH_DIR, split, name))
                labels[name] = image_labels(label)
        if extra_targets:
            _save_labels(root, split, labels)
    meta = dict(
        params,
        generator='featup_plugin.data.synthetic',
        classes=list(CLASSES),
        palette=[list(p) for p in PALETTE],
        ignore_index=255,
        img_suffix='.png',
        seg_map_suffix='.png',
        splits={s: params[f'num_{s}'] for s in SPLITS},
        **(dict(extra_targets=_extras_meta()) if extra_targets else {}),
    )
    _write_json(meta, meta_path)
    os.remove(marker)
    return dict(summary, created=True, seconds=time.perf_counter() - start)
