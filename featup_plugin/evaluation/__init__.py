"""Evaluation (framework-free, numpy): the boundary F-score. Its mmengine metric is
:class:`featup_plugin.mmseg.evaluation.BoundaryFScore`."""

from .boundary import COUNT_KEYS, boundary_counts, boundary_f_score, boundary_map, scores_from_counts

__all__ = ['boundary_f_score', 'boundary_counts', 'scores_from_counts', 'boundary_map', 'COUNT_KEYS']
