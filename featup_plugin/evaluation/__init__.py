"""Evaluation: the boundary F-score (framework-free) and its mmengine metric ``BoundaryFScore``.

``boundary_f_score`` needs only numpy; ``BoundaryFScore`` is registered in mmseg's ``METRICS`` when mmseg is
importable.
"""
from .boundary import COUNT_KEYS, boundary_counts, boundary_f_score, boundary_map, scores_from_counts

__all__ = ['boundary_f_score', 'boundary_counts', 'scores_from_counts', 'boundary_map', 'COUNT_KEYS']

try:  # register the metric only where mmseg imports; errors inside the metric module itself still surface
    import mmseg  # noqa: F401
except ImportError:
    pass
else:
    from .boundary_metric import BoundaryFScore  # noqa: F401
    __all__.append('BoundaryFScore')
