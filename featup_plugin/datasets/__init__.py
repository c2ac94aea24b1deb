"""Datasets: the generated segmentation dataset (framework-free) and its MMSegmentation adapter.

``featup_plugin.datasets.synthetic`` needs only numpy and PIL, ``featup_plugin.datasets.images`` (any folder of
images) numpy, PIL and torch; ``FeatUpSyntheticDataset`` and ``ImageFolderDataset`` are registered in mmseg's
``DATASETS`` when mmseg is importable.
"""
from .synthetic import (CLASSES, GENERATOR_VERSION, PALETTE, DatasetMismatchError, dataset_is_complete,
                        generate_dataset, generate_scene, read_meta, scene_seed)

__all__ = [
    'CLASSES', 'PALETTE', 'GENERATOR_VERSION', 'DatasetMismatchError', 'generate_scene', 'scene_seed',
    'generate_dataset', 'dataset_is_complete', 'read_meta'
]

try:  # register the mmseg adapter only where mmseg imports; errors inside the adapter itself still surface
    import mmseg  # noqa: F401
except ImportError:
    pass
else:
    from .featup_synthetic import FeatUpSyntheticDataset  # noqa: F401
    from .image_folder import ImageFolderDataset  # noqa: F401
    __all__ += ['FeatUpSyntheticDataset', 'ImageFolderDataset']
