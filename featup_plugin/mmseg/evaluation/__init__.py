"""MMSegmentation metrics (``METRICS``)."""

from .boundary_metric import BoundaryFScore

__all__ = ['BoundaryFScore']
