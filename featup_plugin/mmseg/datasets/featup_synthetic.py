"""MMSegmentation adapter for the generated dataset of :mod:`featup_plugin.data.synthetic`."""

import os
import os.path as osp

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from ...data.synthetic import CLASSES, MARKER_FILE, PALETTE

GENERATE_COMMAND = 'python3 tools/dataset_converters/generate_dataset.py --out {root}'


@DATASETS.register_module()
class FeatUpSyntheticDataset(BaseSegDataset):
    """The generated FeatUp dataset (``tools/dataset_converters/generate_dataset.py``): 10 classes, PNG images and
    label maps.

    Label maps hold class indices directly (``reduce_zero_label=False``: class 0 is ``background``, a real class),
    with no ignore pixel. Typical use::

        dict(type='FeatUpSyntheticDataset', data_root='data/featup_synth',
             data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'), pipeline=[...])

    Missing directories raise ``FileNotFoundError`` naming the command that creates them.
    """

    METAINFO = dict(classes=tuple(CLASSES), palette=[list(p) for p in PALETTE])

    def __init__(
        self, img_suffix: str = '.png', seg_map_suffix: str = '.png', reduce_zero_label: bool = False, **kwargs
    ) -> None:
        super().__init__(
            img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, reduce_zero_label=reduce_zero_label, **kwargs
        )

    def _dataset_root(self) -> str:
        if self.data_root:
            return str(self.data_root)
        img_dir = self.data_prefix.get('img_path') or ''
        # <root>/img_dir/<split>
        return osp.dirname(osp.dirname(osp.normpath(img_dir))) or '.'

    def load_data_list(self):
        root = self._dataset_root()
        command = GENERATE_COMMAND.format(root=root)
        if osp.exists(osp.join(root, MARKER_FILE)):
            raise FileNotFoundError(
                f'the generated dataset in {root!r} is incomplete (an interrupted run). '
                f'Re-create it with: {command} --overwrite'
            )
        for key in ('img_path', 'seg_map_path'):
            path = self.data_prefix.get(key)
            if path is None or (key == 'seg_map_path' and path == ''):
                continue
            if not osp.isdir(path):
                raise FileNotFoundError(
                    f'{key} directory {path!r} of FeatUpSyntheticDataset does not exist. '
                    f'Create the dataset with: {command}'
                )
        img_dir = self.data_prefix.get('img_path')
        if not any(name.endswith(self.img_suffix) for name in os.listdir(img_dir)):
            raise FileNotFoundError(f'no {self.img_suffix} image in {img_dir!r}. Create the dataset with: {command}')
        return super().load_data_list()
