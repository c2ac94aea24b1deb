"""MMSegmentation metrics (``METRICS``)."""

from .boundary_metric import BoundaryFScore
from .group_iou_metric import GroupIoUMetric

__all__ = ['BoundaryFScore', 'GroupIoUMetric']
