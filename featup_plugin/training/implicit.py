"""Implicit FeatUp: a per-image implicit upsampler (framework-free: torch only). An MLP on Fourier features of
every pixel's position and colour, fitted to one image by FeatUp's multi-view reconstruction (:func:`fit_implicit`),
renders the image's features at any resolution (:meth:`ImplicitFeatUp.features`).

Derivation / details: docs/training.md#implicit-featup
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint.io import read_checkpoint
from ..upsamplers.downsamplers import build_downsampler
from ..upsamplers.layers import ChannelNorm
from .jitter import apply_jitter, sample_jitter
from .losses import UncertaintyHead, blur_loss, magnitude_tv_loss, uncertainty_loss

__all__ = ['ImplicitFeatUp', 'fourier_features', 'fit_pca', 'fit_implicit', 'IMPLICIT_FORMAT']

IMPLICIT_FORMAT = 'featup_plugin.implicit/1'
Backbone = Callable[[torch.Tensor], torch.Tensor]


def fourier_features(image: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """``[1, 5 * 2 * F + 3, H, W]``: sin and cos of every frequency times each of ``(x, y, r, g, b)`` (positions in
    [-1, 1] at pixel centres), then the raw colour."""
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f'expects one RGB image [1, 3, H, W], got {tuple(image.shape)}')
    _, _, h, w = image.shape
    ys = (torch.arange(h, device=image.device, dtype=image.dtype) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=image.device, dtype=image.dtype) + 0.5) / w * 2 - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing='xy'), 0).unsqueeze(0)  # [1, 2, H, W]: x, y
    inputs = torch.cat([grid, image], 1)  # [1, 5, H, W]
    arg = inputs.unsqueeze(2) * freqs.to(image).view(1, 1, -1, 1, 1)  # [1, 5, F, H, W]
    feats = torch.cat([torch.sin(arg), torch.cos(arg)], 2).reshape(1, -1, h, w)
    return torch.cat([feats, image], 1)


def fit_pca(samples: torch.Tensor, dim: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(mean [C], components [C, k])`` of ``samples [N, C]`` with ``k = min(dim, C, N)``."""
    if samples.dim() != 2 or samples.shape[0] < 2:
        raise ValueError(f'fit_pca needs [N >= 2, C] samples, got {tuple(samples.shape)}')
    mean = samples.mean(0)
    _, _, vh = torch.linalg.svd(samples - mean, full_matrices=False)
    k = min(dim, vh.shape[0])
    return mean, vh[:k].T.contiguous()


class ImplicitFeatUp(nn.Module):
    """The implicit per-image model. ``features(size)`` -> ``[1, C, H, W]`` backbone-space features at ``size``.

    Args:
        image: ``[1, 3, H, W]`` ImageNet-normalised RGB (the image the model is fitted to).
        feat_dim: backbone channels ``C``; ``mean``/``components``: the PCA (``[C]``, ``[C, k]``).
        num_freqs, min_freq, max_freq: ``exp(linspace(min_freq, max_freq, num_freqs))`` (FeatUp: 30, -2, 10).
        hidden: MLP width (FeatUp: 128); ``dropout``: Dropout2d probability (FeatUp: 0.2).
    """

    def __init__(
        self,
        image: torch.Tensor,
        mean: torch.Tensor,
        components: torch.Tensor,
        num_freqs: int = 30,
        min_freq: float = -2.0,
        max_freq: float = 10.0,
        hidden: int = 128,
        dropout: float = 0.2,
    ):
        super().__init__()
        if image.dim() != 4 or image.shape[:2] != (1, 3):
            raise ValueError(f'ImplicitFeatUp fits one RGB image [1, 3, H, W], got {tuple(image.shape)}')
        if components.dim() != 2 or mean.shape != components.shape[:1]:
            raise ValueError(f'PCA mean {tuple(mean.shape)} / components {tuple(components.shape)} do not match')
        self.config = dict(num_freqs=num_freqs, min_freq=min_freq, max_freq=max_freq, hidden=hidden, dropout=dropout)
        self.register_buffer('image', image.detach().clone())
        self.register_buffer('mean', mean.detach().clone())
        self.register_buffer('components', components.detach().clone())
        self.register_buffer('freqs', torch.exp(torch.linspace(min_freq, max_freq, num_freqs)))
        in_dim = 5 * 2 * num_freqs + 3
        out_dim = components.shape[1]
        self.net = nn.Sequential(
            ChannelNorm(in_dim),
            nn.Dropout2d(dropout),
            nn.Conv2d(in_dim, hidden, 1),
            nn.ReLU(),
            nn.Dropout2d(dropout),
            ChannelNorm(hidden),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, out_dim, 1),
        )
        self._cache: Dict[tuple, torch.Tensor] = {}

    @property
    def feat_dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def pca_dim(self) -> int:
        return int(self.components.shape[1])

    def image_at(self, size: Sequence[int]) -> torch.Tensor:
        size = (int(size[0]), int(size[1]))
        if tuple(self.image.shape[-2:]) == size:
            return self.image
        return F.interpolate(
            self.image,
            size=size,
            mode='bilinear',
            align_corners=False,
            antialias=size[0] < self.image.shape[-2] or size[1] < self.image.shape[-1],
        )

    def inputs_at(self, size: Sequence[int]) -> torch.Tensor:
        """The Fourier features at ``size`` (cached: they do not depend on the weights)."""
        size = (int(size[0]), int(size[1]))
        if min(size) < 1:
            raise ValueError(f'size must be positive, got {size}')
        key = size
        if (
            key not in self._cache
            or self._cache[key].device != self.image.device
            or self._cache[key].dtype != self.image.dtype
        ):
            self._cache = {key: fourier_features(self.image_at(size), self.freqs)}  # one size at a time
        return self._cache[key]

    def normalized_inputs_at(self, size: Sequence[int]) -> torch.Tensor:
        """``[H*W, in_dim]``: the Fourier features at ``size`` per pixel, normalised over channels without the
        affine part of the first ChannelNorm (constant: cached with the inputs)."""
        size = (int(size[0]), int(size[1]))
        x = self.inputs_at(size)  # resets the cache when the size, device or dtype changed
        key = ('normalized',) + size
        if key not in self._cache:
            flat = x[0].flatten(1).T  # [H*W, C]
            self._cache[key] = F.layer_norm(flat, flat.shape[-1:], eps=self.net[0].norm.eps).contiguous()
        return self._cache[key]

    def forward(self, size: Optional[Union[int, Sequence[int]]] = None) -> torch.Tensor:
        """PCA-space features ``[1, k, H, W]`` at ``size`` (default: the image's size).

        Computes ``self.net(self.inputs_at(size))``, 2-3x faster on CPU with the same result (how:
        docs/training.md#model)."""
        if size is None:
            size = self.image.shape[-2:]
        elif isinstance(size, int):
            size = (size, size)
        h, w = int(size[0]), int(size[1])
        x_hat = self.normalized_inputs_at((h, w))
        norm0, drop0, conv0, _, drop1, norm1, conv1, _, conv2 = self.net
        w0 = conv0.weight.flatten(1)  # [hidden, in]
        scale, shift = norm0.norm.weight, norm0.norm.bias
        if self.training and drop0.p > 0:  # Dropout2d on a single image: whole input channels
            keep = (torch.rand(scale.shape, device=scale.device) >= drop0.p).to(scale.dtype) / (1 - drop0.p)
            scale, shift = scale * keep, shift * keep
        y = F.relu(F.linear(x_hat, w0 * scale, conv0.bias + w0 @ shift))
        if self.training and drop1.p > 0:
            y = y * ((torch.rand(y.shape[1], device=y.device) >= drop1.p).to(y.dtype) / (1 - drop1.p))
        y = norm1.norm(y)
        y = F.relu(F.linear(y, conv1.weight.flatten(1), conv1.bias))
        y = F.linear(y, conv2.weight.flatten(1), conv2.bias)  # [H*W, k]
        return y.T.reshape(1, -1, h, w)

    def to_pca(self, feats: torch.Tensor) -> torch.Tensor:
        """Backbone-space ``[B, C, h, w]`` -> PCA ``[B, k, h, w]``."""
        return torch.einsum('bchw,ck->bkhw', feats - self.mean.view(1, -1, 1, 1), self.components)

    def from_pca(self, z: torch.Tensor) -> torch.Tensor:
        return torch.einsum('bkhw,ck->bchw', z, self.components) + self.mean.view(1, -1, 1, 1)

    @torch.no_grad()
    def features(self, size: Optional[Union[int, Sequence[int]]] = None) -> torch.Tensor:
        """Backbone-space features ``[1, C, H, W]`` at ``size`` (eval mode, no gradient)."""
        was = self.training
        self.eval()
        try:
            return self.from_pca(self(size))
        finally:
            self.train(was)

    # -- files ---------------------------------------------------------------------------------------------------
    def save(self, path: str, extra: Optional[dict] = None) -> None:
        """A small file: the MLP, the PCA, the image and the config. The image is kept in float32: the highest
        Fourier frequencies (e^10 rad per unit of colour) make the model sensitive to any rounding of colours."""
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        torch.save(
            dict(
                format=IMPLICIT_FORMAT,
                config=self.config,
                net=state,
                image=self.image.float().cpu(),
                mean=self.mean.cpu(),
                components=self.components.cpu(),
                extra=extra or {},
            ),
            path,
        )

    @classmethod
    def load(cls, path: str, map_location='cpu') -> 'ImplicitFeatUp':
        obj = read_checkpoint(path, map_location=map_location)
        if not isinstance(obj, dict) or obj.get('format') != IMPLICIT_FORMAT:
            raise ValueError(
                f'{path} is not an implicit FeatUp file ({IMPLICIT_FORMAT}); write one with tools/fit_implicit.py'
            )
        model = cls(obj['image'], obj['mean'].float(), obj['components'].float(), **obj['config'])
        model.net.load_state_dict(obj['net'])
        model.extra = obj.get('extra', {})
        return model.eval()


def _lr_features(backbone: Backbone, img: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = backbone(img)
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        raise ValueError(
            f'the backbone must return [B, C, h, w] features, got '
            f'{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}'
        )
    return out


def fit_implicit(
    image: torch.Tensor,
    backbone: Backbone,
    steps: int = 1200,
    views: int = 10,
    max_pad: int = 30,
    max_zoom: float = 1.8,
    pca_dim: int = 128,
    pca_views: int = 50,
    lr: float = 1e-3,
    downsampler: str = 'attention',
    downsampler_kernel: Optional[int] = None,
    seed: int = 0,
    mag_weight: float = 0.001,
    mag_tv_weight: float = 0.05,
    blur_weight: float = 0.1,
    view_bank: bool = False,
    fit_size: Optional[Union[int, Sequence[int]]] = None,
    progress: Optional[Callable[[int, int, float], None]] = None,
    **model_kwargs,
) -> Tuple[ImplicitFeatUp, List[float]]:
    """Fit :class:`ImplicitFeatUp` to ``image [1, 3, H, W]`` (ImageNet-normalised RGB) for a frozen ``backbone``
    (a callable image -> ``[B, C, h, w]``; e.g. ChannelNorm'ed ViT tokens). Returns ``(model, losses)``, the
    per-step total losses. ``progress(step, steps, loss)`` is called after every step (a progress bar).
    ``downsampler_kernel`` defaults to the backbone's stride at the fitting resolution (fit height / feature
    height).

    Two options make it CPU-sized (FeatUp's defaults have both off; details: docs/training.md#fitting-fit_implicit):

    * ``view_bank=True``: each step draws its ``views`` targets from the ``pca_views`` views computed for the PCA,
      so the backbone runs ``pca_views`` times in all instead of ``steps * views`` times.
    * ``fit_size``: render the features at this size (int or ``(H, W)``) while fitting; the model still answers at
      any resolution, but detail finer than ``fit_size`` is only constrained by the colour inputs."""
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f'fit_implicit expects one image [1, 3, H, W], got {tuple(image.shape)}')
    if steps < 0 or views < 1 or pca_views < 1:
        raise ValueError(f'need steps >= 0, views >= 1, pca_views >= 1; got {steps}, {views}, {pca_views}')
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    size = tuple(image.shape[-2:])
    if fit_size is None:
        fit_hw = size
    else:
        fit_hw = (
            (fit_size, fit_size)
            if isinstance(fit_size, int)
            else tuple(fit_size)
            if isinstance(fit_size, (list, tuple))
            else (fit_size,)
        )
        if len(fit_hw) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in fit_hw):
            raise ValueError(f'fit_size must be a positive int or (H, W), got {fit_size!r}')
    # PCA on the features of jittered views (FeatUp: 50 views); with view_bank they are also the targets
    samples, bank = [], []
    for _ in range(pca_views):
        t = sample_jitter(size, max_pad, max_zoom, generator=gen)
        f = _lr_features(backbone, apply_jitter(image, t))
        samples.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
        if view_bank:
            bank.append((t, f))
    mean, comps = fit_pca(torch.cat(samples).float(), pca_dim)
    lr_size = f.shape[-2:]
    model = ImplicitFeatUp(image, mean, comps, **model_kwargs).to(image.device)
    kernel = downsampler_kernel or max(1, round(fit_hw[0] / lr_size[0]))
    down = build_downsampler(downsampler, model.pca_dim, kernel).to(image.device)
    scale_net = UncertaintyHead(model.pca_dim).to(image.device)
    params = list(model.net.parameters()) + list(down.parameters()) + list(scale_net.parameters())
    opt = torch.optim.NAdam(params, lr=lr)
    model.train(), down.train(), scale_net.train()
    if bank:
        bank = [(t, model.to_pca(f.to(model.components.dtype))) for t, f in bank]
    losses: List[float] = []
    for step in range(steps):
        hr = model(fit_hw)
        loss = hr.new_zeros(())
        for _ in range(views):
            if bank:
                t, target = bank[int(torch.randint(len(bank), (), generator=gen))]
            else:
                t = sample_jitter(size, max_pad, max_zoom, generator=gen)
                target = model.to_pca(_lr_features(backbone, apply_jitter(image, t)))
            pred = down(apply_jitter(hr, t), target.shape[-2:])
            loss = loss + uncertainty_loss(pred, target, scale_net(target)) / views
        mag = hr.square().sum(1, keepdim=True)
        loss = loss + mag_weight * mag.mean() + mag_tv_weight * magnitude_tv_loss(hr) + blur_weight * blur_loss(hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, steps, losses[-1])
    return model.eval(), losses
