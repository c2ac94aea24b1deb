"""Data (framework-free): the generated segmentation dataset (numpy + PIL) and image folders (+ torch).

The MMSegmentation datasets over them are in :mod:`featup_plugin.mmseg.datasets`.
"""

from .synthetic import (
    CLASSES,
    GENERATOR_VERSION,
    PALETTE,
    DatasetMismatchError,
    dataset_is_complete,
    generate_dataset,
    generate_scene,
    generate_scene_targets,
    image_labels,
    read_depth,
    read_image_labels,
    read_meta,
    scene_seed,
)

__all__ = [
    'CLASSES',
    'PALETTE',
    'GENERATOR_VERSION',
    'DatasetMismatchError',
    'generate_scene',
    'generate_scene_targets',
    'image_labels',
    'read_depth',
    'read_image_labels',
    'scene_seed',
    'generate_dataset',
    'dataset_is_complete',
    'read_meta',
]
