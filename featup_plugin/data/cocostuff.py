"""COCO-Stuff with FeatUp's 27 coarse classes (framework-free: numpy, PIL, torch).

FeatUp (after STEGO) evaluates its probes on COCO-Stuff's 27 super-categories: the 12 thing and 15 stuff
super-categories of COCO-Stuff's label hierarchy, in the hierarchy's order (indoor things, outdoor things, indoor
stuff, outdoor stuff). :data:`FINE_TO_COARSE` is built from that hierarchy (:data:`COCOSTUFF_HIERARCHY`: every
COCO-Stuff label under its super-category); it maps the 182 label ids of the ``stuffthingmaps`` PNGs (0-181, of
which 11 thing ids are never used) and, through :data:`MMSEG_171_IDS`, the 171 contiguous ids written by
MMSegmentation's ``coco_stuff164k.py`` converter (``*_labelTrainIds.png``). 255 stays "ignore".

:class:`CocoStuff27` reads either layout (docs/evaluation.md#featups-protocol-on-coco-stuff-27)::

    ROOT/images/{train2017,val2017}/ID.jpg
    ROOT/annotations/{train2017,val2017}/ID.png                 # stuffthingmaps (182 ids), or
    ROOT/annotations/{train2017,val2017}/ID_labelTrainIds.png   # mmseg's conversion (171 ids)
    ROOT/curated/{train2017,val2017}/Coco164kFull_Stuff_Coarse.txt   # optional: FeatUp/STEGO's image list
    DEPTH_ROOT/{train2017,val2017}/ID.npy | ID.png              # optional depth targets (e.g. MiDaS pseudo-depth)
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ..upsamplers.guidance import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    'COCOSTUFF_HIERARCHY',
    'COCOSTUFF_FINE',
    'COCOSTUFF27_CLASSES',
    'MMSEG_171_IDS',
    'FINE_TO_COARSE',
    'coarse_lut',
    'to_coarse',
    'CocoStuff27',
    'FEATUP_IMAGE_LIST',
]

# The 91 thing ids of COCO (1-91, here 0-90) and the 91 stuff ids (92-182, here 91-181), in id order. The things
# marked '*' are in COCO's id space but were never annotated (no pixel carries them; mmseg's converter drops them).
_THINGS = (
    'person bicycle car motorcycle airplane bus train truck boat traffic-light fire-hydrant street-sign* stop-sign '
    'parking-meter bench bird cat dog horse sheep cow elephant bear zebra giraffe hat* backpack umbrella shoe* '
    'eye-glasses* handbag tie suitcase frisbee skis snowboard sports-ball kite baseball-bat baseball-glove '
    'skateboard surfboard tennis-racket bottle plate* wine-glass cup fork knife spoon bowl banana apple sandwich '
    'orange broccoli carrot hot-dog pizza donut cake chair couch potted-plant bed mirror* dining-table window* '
    'desk* toilet door* tv laptop mouse remote keyboard cell-phone microwave oven toaster sink refrigerator '
    'blender* book clock vase scissors teddy-bear hair-drier toothbrush hair-brush*'
).split()
_STUFF = (
    'banner blanket branch bridge building-other bush cabinet cage cardboard carpet ceiling-other ceiling-tile '
    'cloth clothes clouds counter cupboard curtain desk-stuff dirt door-stuff fence floor-marble floor-other '
    'floor-stone floor-tile floor-wood flower fog food-other fruit furniture-other grass gravel ground-other hill '
    'house leaves light mat metal mirror-stuff moss mountain mud napkin net paper pavement pillow plant-other '
    'plastic platform playingfield railing railroad river road rock roof rug salad sand sea shelf sky-other '
    'skyscraper snow solid-other stairs stone straw structural-other table tent textile-other towel tree '
    'vegetable wall-brick wall-concrete wall-other wall-panel wall-stone wall-tile wall-wood water-other '
    'waterdrops window-blind window-other wood'
).split()

#: The 182 COCO-Stuff label names by ``stuffthingmaps`` id (0-181).
COCOSTUFF_FINE: Tuple[str, ...] = tuple(n.rstrip('*') for n in _THINGS + _STUFF)
_UNUSED = frozenset(i for i, n in enumerate(_THINGS) if n.endswith('*'))

#: COCO-Stuff's hierarchy: the 27 super-categories in FeatUp's order, each with its labels.
COCOSTUFF_HIERARCHY: Tuple[Tuple[str, Tuple[str, ...]], ...] = tuple(
    (coarse, tuple(fine.split()))
    for coarse, fine in (
        # indoor things
        ('electronic', 'tv laptop mouse remote keyboard cell-phone'),
        ('appliance', 'microwave oven toaster sink refrigerator blender'),
        ('food-things', 'banana apple sandwich orange broccoli carrot hot-dog pizza donut cake'),
        ('furniture-things', 'chair couch potted-plant bed mirror dining-table window desk toilet door'),
        ('indoor', 'book clock vase scissors teddy-bear hair-drier toothbrush hair-brush'),
        ('kitchen', 'bottle plate wine-glass cup fork knife spoon bowl'),
        # outdoor things
        ('accessory', 'hat backpack umbrella shoe eye-glasses handbag tie suitcase'),
        ('animal', 'bird cat dog horse sheep cow elephant bear zebra giraffe'),
        ('outdoor', 'traffic-light fire-hydrant street-sign stop-sign parking-meter bench'),
        ('person', 'person'),
        (
            'sports',
            'frisbee skis snowboard sports-ball kite baseball-bat baseball-glove skateboard surfboard tennis-racket',
        ),
        ('vehicle', 'bicycle car motorcycle airplane bus train truck boat'),
        # indoor stuff
        ('ceiling', 'ceiling-other ceiling-tile'),
        ('floor', 'carpet floor-marble floor-other floor-stone floor-tile floor-wood'),
        ('food-stuff', 'food-other fruit salad vegetable'),
        (
            'furniture-stuff',
            'cabinet counter cupboard desk-stuff door-stuff furniture-other light mirror-stuff shelf stairs table',
        ),
        ('rawmaterial', 'cardboard metal paper plastic'),
        ('textile', 'banner blanket cloth clothes curtain mat napkin pillow rug textile-other towel'),
        ('wall', 'wall-brick wall-concrete wall-other wall-panel wall-stone wall-tile wall-wood'),
        ('window', 'window-blind window-other'),
        # outdoor stuff
        ('building', 'bridge building-other house roof skyscraper tent'),
        (
            'ground',
            'dirt gravel ground-other mud pavement platform playingfield railroad road sand snow',
        ),
        ('plant', 'branch bush flower grass leaves moss plant-other straw tree'),
        ('sky', 'clouds sky-other'),
        ('solid', 'hill mountain rock solid-other stone wood'),
        ('structural', 'cage fence net railing structural-other'),
        ('water', 'fog river sea water-other waterdrops'),
    )
)

#: FeatUp's 27 class names (index = coarse label).
COCOSTUFF27_CLASSES: Tuple[str, ...] = tuple(c for c, _ in COCOSTUFF_HIERARCHY)


def _fine_to_coarse() -> Tuple[int, ...]:
    index = {name: i for i, name in enumerate(COCOSTUFF_FINE)}
    out = [-1] * len(COCOSTUFF_FINE)
    for c, (_, names) in enumerate(COCOSTUFF_HIERARCHY):
        for n in names:
            out[index[n]] = c  # a KeyError here is a typo in the table (a test checks the table is complete)
    return tuple(out)


#: ``stuffthingmaps`` id (0-181) -> coarse class (0-26).
FINE_TO_COARSE: Tuple[int, ...] = _fine_to_coarse()
#: mmseg's 171 contiguous ids -> ``stuffthingmaps`` id (its converter keeps the used ids, in order).
MMSEG_171_IDS: Tuple[int, ...] = tuple(i for i in range(len(COCOSTUFF_FINE)) if i not in _UNUSED)

#: FeatUp's (STEGO's curated) image list file name under ``ROOT/curated/<split>/``.
FEATUP_IMAGE_LIST = 'Coco164kFull_Stuff_Coarse.txt'


def coarse_lut(label_format: str = 'stuffthingmaps', ignore_index: int = 255) -> np.ndarray:
    """A 256-entry lookup table from a label PNG's values to the 27 coarse classes (``ignore_index`` elsewhere).

    ``label_format``: ``'stuffthingmaps'`` (ids 0-181) or ``'mmseg171'`` (mmseg's ``*_labelTrainIds.png``)."""
    lut = np.full(256, ignore_index, dtype=np.int64)
    if label_format == 'stuffthingmaps':
        lut[: len(FINE_TO_COARSE)] = FINE_TO_COARSE
    elif label_format == 'mmseg171':
        lut[: len(MMSEG_171_IDS)] = [FINE_TO_COARSE[i] for i in MMSEG_171_IDS]
    else:
        raise ValueError(f"label_format must be 'stuffthingmaps' or 'mmseg171', got {label_format!r}")
    return lut


def to_coarse(label: np.ndarray, label_format: str = 'stuffthingmaps', ignore_index: int = 255) -> np.ndarray:
    """A COCO-Stuff label map (uint8 values) as 27-class labels (int64; ``ignore_index`` for unlabeled)."""
    label = np.asarray(label)
    if label.dtype.kind not in 'ui' or (label.size and (label.min() < 0 or label.max() > 255)):
        raise ValueError(f'to_coarse: expected a label map with values in 0..255, got dtype {label.dtype}')
    return coarse_lut(label_format, ignore_index)[label.astype(np.int64)]


def _resize_crop(im: Image.Image, size: int, resample) -> Image.Image:
    """Shorter side to ``size`` (torchvision's ``Resize(size)``), then the centre ``size x size`` crop."""
    scale = size / min(im.width, im.height)
    w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
    im = im.resize((w, h), resample)
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


class CocoStuff27(torch.utils.data.Dataset):
    """COCO-Stuff images with FeatUp's 27-class labels (and optional depth targets) at ``size x size``.

    Each item is ``dict(img=[3, S, S] ImageNet-normalised float, label=[S, S] int64 (255 = ignore), name=ID)``
    plus ``depth=[S, S] float32`` when ``depth_root`` is given. Images are resized (shorter side to ``size``,
    bilinear) and centre-cropped, as FeatUp prepares its probe data; labels and depth use nearest sampling.

    Args:
        root: the COCO-Stuff folder (module docstring). ``split``: ``'train'`` / ``'val'`` (or the folder names).
        image_list: ``'auto'`` (FeatUp's curated list when ``ROOT/curated/<split>/`` has it, else every image
            with a label), ``None`` (every image with a label), or a path to a file of image ids.
        label_format: ``'auto'`` (per file: ``ID_labelTrainIds.png`` -> mmseg171, ``ID.png`` -> stuffthingmaps)
            or one of those two.
        depth_root: folder with ``<split>/ID.npy`` (float) or ``ID.png`` (16-bit) depth / inverse-depth maps.
        limit: use the first ``limit`` images only (quick runs).
    """

    SPLITS = {'train': 'train2017', 'val': 'val2017'}

    def __init__(
        self,
        root: Union[str, os.PathLike],
        split: str = 'train',
        size: int = 224,
        image_list: Optional[str] = 'auto',
        label_format: str = 'auto',
        depth_root: Optional[Union[str, os.PathLike]] = None,
        limit: Optional[int] = None,
        ignore_index: int = 255,
    ):
        self.root = os.fspath(root)
        self.split = self.SPLITS.get(split, split)
        if not isinstance(size, int) or size < 1:
            raise ValueError(f'CocoStuff27: size must be a positive int, got {size!r}')
        if label_format not in ('auto', 'stuffthingmaps', 'mmseg171'):
            raise ValueError(
                f"CocoStuff27: label_format must be 'auto', 'stuffthingmaps' or 'mmseg171', got {label_format!r}"
            )
        self.size, self.label_format, self.ignore_index = size, label_format, ignore_index
        self.image_dir = os.path.join(self.root, 'images', self.split)
        self.label_dir = os.path.join(self.root, 'annotations', self.split)
        for d in (self.image_dir, self.label_dir):
            if not os.path.isdir(d):
                raise FileNotFoundError(
                    f'CocoStuff27: {d!r} does not exist (expected ROOT/images/<split>/ID.jpg and '
                    f'ROOT/annotations/<split>/ID.png or ID_labelTrainIds.png; see docs/evaluation.md)'
                )
        self.depth_dir = None if depth_root is None else os.path.join(os.fspath(depth_root), self.split)
        if self.depth_dir is not None and not os.path.isdir(self.depth_dir):
            raise FileNotFoundError(f'CocoStuff27: depth folder {self.depth_dir!r} does not exist')
        self.ids = self._list_ids(image_list)
        if limit is not None:
            if limit < 1:
                raise ValueError(f'CocoStuff27: limit must be >= 1, got {limit}')
            self.ids = self.ids[:limit]
        if not self.ids:
            raise FileNotFoundError(f'CocoStuff27: no labelled image in {self.image_dir!r}')
        self._luts: Dict[str, np.ndarray] = {}

    def _list_ids(self, image_list: Optional[str]) -> List[str]:
        if image_list == 'auto':
            curated = os.path.join(self.root, 'curated', self.split, FEATUP_IMAGE_LIST)
            image_list = curated if os.path.isfile(curated) else None
        if image_list is not None:
            if not os.path.isfile(image_list):
                raise FileNotFoundError(f'CocoStuff27: image list {image_list!r} does not exist')
            with open(image_list) as f:
                ids = [line.strip() for line in f if line.strip()]
            missing = [i for i in ids if self._label_path(i) is None]
            if missing:
                raise FileNotFoundError(
                    f'CocoStuff27: {len(missing)} image(s) of {image_list!r} have no label in {self.label_dir!r}, '
                    f'e.g. {missing[0]!r}'
                )
            return ids
        ids = sorted(os.path.splitext(f)[0] for f in os.listdir(self.image_dir) if f.lower().endswith('.jpg'))
        return [i for i in ids if self._label_path(i) is not None]

    def _label_path(self, image_id: str) -> Optional[Tuple[str, str]]:
        candidates = []
        if self.label_format in ('auto', 'mmseg171'):
            candidates.append((os.path.join(self.label_dir, image_id + '_labelTrainIds.png'), 'mmseg171'))
        if self.label_format in ('auto', 'stuffthingmaps'):
            candidates.append((os.path.join(self.label_dir, image_id + '.png'), 'stuffthingmaps'))
        for path, fmt in candidates:
            if os.path.isfile(path):
                return path, fmt
        return None

    def __len__(self) -> int:
        return len(self.ids)

    def _depth(self, image_id: str) -> np.ndarray:
        for ext in ('.npy', '.png'):
            path = os.path.join(self.depth_dir, image_id + ext)
            if os.path.isfile(path):
                arr = np.load(path) if ext == '.npy' else np.asarray(Image.open(path))
                arr = np.asarray(arr, dtype=np.float32)
                if arr.ndim != 2:
                    raise ValueError(f'CocoStuff27: depth map {path!r} must be 2-D, got shape {arr.shape}')
                return arr
        raise FileNotFoundError(f'CocoStuff27: no depth map {image_id}.npy / .png in {self.depth_dir!r}')

    def __getitem__(self, index: int) -> dict:
        image_id = self.ids[index]
        with Image.open(os.path.join(self.image_dir, image_id + '.jpg')) as im:
            img_size = im.size
            im = _resize_crop(im.convert('RGB'), self.size, Image.BILINEAR)
            img = torch.from_numpy(np.asarray(im, dtype=np.float32).copy() / 255.0).permute(2, 0, 1)
        img = (img - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
        path, fmt = self._label_path(image_id)
        with Image.open(path) as lab:
            if lab.size != img_size:
                raise ValueError(f'CocoStuff27: label {path!r} is {lab.size}, its image {img_size} (W, H)')
            raw = _resize_crop(lab, self.size, Image.NEAREST)
        if fmt not in self._luts:
            self._luts[fmt] = coarse_lut(fmt, self.ignore_index)
        label = torch.from_numpy(self._luts[fmt][np.asarray(raw, dtype=np.int64)])
        out = dict(img=img, label=label, name=image_id)
        if self.depth_dir is not None:
            depth = self._depth(image_id)
            if depth.shape[::-1] != img_size:
                raise ValueError(
                    f'CocoStuff27: depth of {image_id!r} is {depth.shape[::-1]}, its image {img_size} (W, H)'
                )
            d = _resize_crop(Image.fromarray(depth, mode='F'), self.size, Image.NEAREST)
            out['depth'] = torch.from_numpy(np.asarray(d, dtype=np.float32).copy())
        return out
