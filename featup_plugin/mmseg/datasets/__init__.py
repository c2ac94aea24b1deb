"""MMSegmentation datasets (``DATASETS``): the generated dataset and a folder of unlabeled images."""

from .featup_synthetic import FeatUpSyntheticDataset
from .image_folder import ImageFolderDataset

__all__ = ['FeatUpSyntheticDataset', 'ImageFolderDataset']
