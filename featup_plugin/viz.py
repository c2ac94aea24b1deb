"""Feature pictures (FeatUp's ``featup.util.pca`` and ``featup.plotting.plot_feats``): torch only, matplotlib for
the figure (imported when :func:`plot_feats` is called).

    [lr_rgb, hr_rgb], fitted = pca([lr, hr])       # ONE PCA fitted on both maps, applied to each
    fig = plot_feats(image_rgb[0], lr[0], hr[0])   # image | low-res features | upsampled features
    fig.savefig('feats.png')

As FeatUp: when several maps are given, the PCA is fitted on all of them resized (bilinear) to the first map's size,
then each map is projected at its own size and min-max scaled per component (``scale='map'``). ``scale='fit'``
scales every map with the 1st / 99th percentiles of the fitted data instead, so colours compare across maps.
The fit is an exact eigendecomposition (FeatUp uses ``torch.pca_lowrank``, randomised), with a fixed sign per
component, so it is deterministic.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ['TorchPCA', 'pca', 'plot_feats']

_MAX_QUANTILE_ROWS = 1_000_000


class TorchPCA:
    """PCA of ``[N, C]`` rows: ``fit(x)`` sets ``mean_ [C]``, ``components_ [k, C]`` (unit rows, largest variance
    first, each with its largest-magnitude entry positive) and ``explained_variance_ [k]``; ``transform(x)`` =
    ``(x - mean_) @ components_.T``."""

    def __init__(self, n_components: int):
        if not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f'n_components must be a positive int, got {n_components!r}')
        self.n_components = n_components
        self.lo_: Optional[torch.Tensor] = None  # per-component 1st / 99th percentiles of the fitted projections
        self.hi_: Optional[torch.Tensor] = None

    def fit(self, x: torch.Tensor) -> 'TorchPCA':
        if x.dim() != 2 or x.shape[0] < 2:
            raise ValueError(f'PCA needs [N >= 2, C] rows, got {tuple(x.shape)}')
        if self.n_components > x.shape[1]:
            raise ValueError(f'n_components={self.n_components} exceeds the {x.shape[1]} feature channels')
        x64 = x.detach().double()
        self.mean_ = x64.mean(0)
        centred = x64 - self.mean_
        evals, evecs = torch.linalg.eigh(centred.T @ centred / (x.shape[0] - 1))
        order = torch.argsort(evals, descending=True)[: self.n_components]
        comps = evecs[:, order].T
        flip = comps.gather(1, comps.abs().argmax(1, keepdim=True)).sign()
        self.components_ = (comps * flip).to(x.dtype)
        self.explained_variance_ = evals[order].clamp_min(0).to(x.dtype)
        self.mean_ = self.mean_.to(x.dtype)
        z = self.transform(x)
        if z.shape[0] > _MAX_QUANTILE_ROWS:
            z = z[torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(0))[:_MAX_QUANTILE_ROWS]]
        self.lo_, self.hi_ = torch.quantile(z, 0.01, dim=0), torch.quantile(z, 0.99, dim=0)
        return self

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean_.to(x)) @ self.components_.to(x).T


def _rows(feats: torch.Tensor, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B*H*W, C]`` on the CPU (resized to ``size`` first when given)."""
    if size is not None and tuple(feats.shape[-2:]) != tuple(size):
        feats = F.interpolate(feats, size, mode='bilinear', align_corners=False)
    return feats.detach().permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).float().cpu()


def pca(
    feats_list: Sequence[torch.Tensor],
    dim: int = 3,
    fit_pca: Optional[TorchPCA] = None,
    max_samples: Optional[int] = None,
    scale: str = 'map',
) -> Tuple[List[torch.Tensor], TorchPCA]:
    """FeatUp's ``pca``: ``([B, dim, H, W] maps in [0, 1], one per input, on its device), fitted PCA``.

    Args:
        feats_list: ``[B, C, H, W]`` maps with the same ``C`` (sizes may differ).
        dim: components (3: RGB).
        fit_pca: a PCA fitted before (e.g. on other images) to apply instead of fitting one.
        max_samples: fit on at most this many random rows (seeded), for large maps.
        scale: ``'map'`` (FeatUp): min-max per map and component; ``'fit'``: the fitted data's 1st / 99th
            percentiles for every map (clamped), so that colours compare across maps.
    """
    if scale not in ('map', 'fit'):
        raise ValueError(f"scale must be 'map' (FeatUp's per-map min-max) or 'fit', got {scale!r}")
    feats_list = list(feats_list)
    if not feats_list or any(not isinstance(f, torch.Tensor) or f.dim() != 4 for f in feats_list):
        shapes = [tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__ for f in feats_list]
        raise ValueError(f'pca expects a non-empty list of [B, C, H, W] tensors, got {shapes}')
    channels = {int(f.shape[1]) for f in feats_list}
    if len(channels) != 1:
        raise ValueError(f'pca: the maps must have the same number of channels, got {sorted(channels)}')
    if fit_pca is None:
        size = tuple(feats_list[0].shape[-2:]) if len(feats_list) > 1 else None
        x = torch.cat([_rows(f, size) for f in feats_list])
        if max_samples is not None and x.shape[0] > max_samples:
            x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:max_samples]]
        fit_pca = TorchPCA(dim).fit(x)
    out = []
    for f in feats_list:
        z = fit_pca.transform(_rows(f))
        if scale == 'map':
            lo, hi = z.min(0).values, z.max(0).values
        else:
            lo, hi = fit_pca.lo_, fit_pca.hi_
        z = ((z - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
        b, _, h, w = f.shape
        out.append(z.reshape(b, h, w, -1).permute(0, 3, 1, 2).to(f.device))
    return out, fit_pca


def _chw(t: torch.Tensor, what: str) -> torch.Tensor:
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3:
        raise ValueError(f'plot_feats: {what} must be [C, H, W] (or [1, C, H, W]), got {tuple(t.shape)}')
    return t.detach().float().cpu()


def plot_feats(
    image: torch.Tensor,
    lr: torch.Tensor,
    hr: torch.Tensor,
    imagenet_normalized: bool = False,
    titles: Sequence[str] = ('Image', 'Original Features', 'Upsampled Features'),
    figsize: Tuple[float, float] = (15, 5),
):
    """FeatUp's figure: ``image | PCA(lr) | PCA(hr)``, one PCA fitted on both feature maps; returns a matplotlib
    ``Figure`` (``fig.savefig(...)``; shown inline in notebooks).

    ``image``: RGB ``[3, H, W]`` in [0, 1], or ImageNet-normalised with ``imagenet_normalized=True``; ``lr``,
    ``hr``: ``[C, h, w]`` and ``[C, H', W']`` (a leading batch of 1 is accepted)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - matplotlib is installed where the tests run
        raise ImportError('plot_feats needs matplotlib: pip install matplotlib (pca() works without it)') from err
    image, lr, hr = _chw(image, 'image'), _chw(lr, 'lr'), _chw(hr, 'hr')
    if image.shape[0] != 3:
        raise ValueError(f'plot_feats: image must be RGB [3, H, W], got {tuple(image.shape)}')
    if lr.shape[0] != hr.shape[0]:
        raise ValueError(f'plot_feats: lr and hr must have the same channels, got {lr.shape[0]} and {hr.shape[0]}')
    if imagenet_normalized:
        from .data.images import denormalize

        image = denormalize(image)
    [lr_rgb, hr_rgb], _ = pca([lr[None], hr[None]])
    fig = Figure(figsize=figsize)
    axes = fig.subplots(1, 3)
    for ax, pic, title in zip(axes, (image.clamp(0, 1), lr_rgb[0], hr_rgb[0]), titles):
        ax.imshow(pic.permute(1, 2, 0).numpy())
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig
