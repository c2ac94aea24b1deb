"""Implicit FeatUp: a per-image implicit upsampler (framework-free: torch only). An MLP on Fourier features of
every pixel's position and colour, fitted to one image by FeatUp's multi-view reconstruction (:func:`fit_implicit`),
renders the image's features at any resolution (:meth:`ImplicitFeatUp.features`).

Derivation / details: docs/training.md#implicit-featup
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint.io import read_checkpoint
from ..upsamplers.downsamplers import build_downsampler
from ..upsamplers.layers import ChannelNorm
from .jitter import apply_jitter, sample_jitter
from .losses import UncertaintyHead, blur_loss, magnitude, magnitude_loss, magnitude_tv_loss, uncertainty_loss

__all__ = [
    'ImplicitFeatUp',
    'fourier_features',
    'position_grid',
    'fit_pca',
    'fit_implicit',
    'implicit_kernel',
    'implicit_loss',
    'IMPLICIT_FORMAT',
]

IMPLICIT_FORMAT = 'featup_plugin.implicit/2'
_LEGACY_FORMATS = {'featup_plugin.implicit/1': dict(colour='imagenet', grid='centres', learn_phases=False)}
COLOUR_ENCODINGS = ('minmax', 'imagenet')
GRIDS = ('corners', 'centres')
Backbone = Callable[[torch.Tensor], torch.Tensor]


def position_grid(h: int, w: int, grid: str = 'corners', device=None, dtype=torch.float32) -> torch.Tensor:
    """``[1, 2, H, W]`` pixel positions ``(x, y)`` in ``[-1, 1]``: ``'corners'`` = ``linspace(-1, 1, n)`` (FeatUp:
    the first and last pixels at -1 and 1), ``'centres'`` = pixel centres ``(i + 0.5) / n * 2 - 1`` (the
    convention of ``align_corners=False`` resizing: a point keeps its coordinate at every render size)."""
    if grid not in GRIDS:
        raise ValueError(f'grid must be one of {GRIDS}, got {grid!r}')
    if grid == 'corners':
        ys = torch.linspace(-1, 1, h, device=device, dtype=dtype)
        xs = torch.linspace(-1, 1, w, device=device, dtype=dtype)
    else:
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h * 2 - 1
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w * 2 - 1
    return torch.stack(torch.meshgrid(xs, ys, indexing='xy'), 0).unsqueeze(0)


def fourier_features(
    image: torch.Tensor, freqs: torch.Tensor, phases: Optional[torch.Tensor] = None, grid: str = 'corners'
) -> torch.Tensor:
    """``[1, 5 * 2 * F + 3, H, W]``: per input ``v`` of ``(x, y, r, g, b)`` (positions from
    :func:`position_grid`; the colour as given), ``sin(f * v + phase)`` for every frequency ``f``, then
    ``cos(f * v + phase')``; then the colour itself. ``phases [2, 5, F]`` (sin, cos): FeatUp's learned biases
    (None: 0)."""
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f'expects one RGB image [1, 3, H, W], got {tuple(image.shape)}')
    _, _, h, w = image.shape
    inputs = torch.cat([position_grid(h, w, grid, image.device, image.dtype), image], 1)  # [1, 5, H, W]
    arg = inputs.unsqueeze(2) * freqs.to(image).view(1, 1, -1, 1, 1)  # [1, 5, F, H, W]
    if phases is None:
        sin, cos = torch.sin(arg), torch.cos(arg)
    else:
        if phases.shape != (2, 5, freqs.numel()):
            raise ValueError(f'phases must be [2, 5, {freqs.numel()}], got {tuple(phases.shape)}')
        ph = phases.to(image.dtype).view(2, 1, 5, -1, 1, 1)
        sin, cos = torch.sin(arg + ph[0]), torch.cos(arg + ph[1])
    return torch.cat([torch.cat([sin, cos], 2).reshape(1, -1, h, w), image], 1)


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
        mean, components: the PCA (``[C]``, ``[C, k]``) of the backbone's ``C`` channels.
        num_freqs, min_freq, max_freq: ``exp(linspace(min_freq, max_freq, num_freqs))`` (FeatUp: 30, -2, 10).
        hidden: MLP width (FeatUp: 128); ``dropout``: Dropout2d probability (FeatUp: 0.2).
        colour: ``'minmax'`` (FeatUp's ``MinMaxScaler``: each channel scaled by the image's own min and max to
            [-0.5, 0.5]) or ``'imagenet'`` (the ImageNet-normalised colour as given).
        grid: pixel positions, ``'corners'`` (FeatUp) or ``'centres'`` (:func:`position_grid`).
        learn_phases: learned phases of the Fourier features (FeatUp: True, initialised ``randn``).
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
        colour: str = 'minmax',
        grid: str = 'corners',
        learn_phases: bool = True,
    ):
        super().__init__()
        if image.dim() != 4 or image.shape[:2] != (1, 3):
            raise ValueError(f'ImplicitFeatUp fits one RGB image [1, 3, H, W], got {tuple(image.shape)}')
        if components.dim() != 2 or mean.shape != components.shape[:1]:
            raise ValueError(f'PCA mean {tuple(mean.shape)} / components {tuple(components.shape)} do not match')
        if colour not in COLOUR_ENCODINGS:
            raise ValueError(f'colour must be one of {COLOUR_ENCODINGS}, got {colour!r}')
        if grid not in GRIDS:
            raise ValueError(f'grid must be one of {GRIDS}, got {grid!r}')
        if num_freqs < 1 or hidden < 1 or not 0 <= dropout < 1:
            raise ValueError(
                f'need num_freqs >= 1, hidden >= 1, 0 <= dropout < 1; got {num_freqs}, {hidden}, {dropout}'
            )
        self.config = dict(
            num_freqs=num_freqs,
            min_freq=min_freq,
            max_freq=max_freq,
            hidden=hidden,
            dropout=dropout,
            colour=colour,
            grid=grid,
            learn_phases=bool(learn_phases),
        )
        self.register_buffer('image', image.detach().clone())
        self.register_buffer('mean', mean.detach().clone())
        self.register_buffer('components', components.detach().clone())
        self.register_buffer('freqs', torch.exp(torch.linspace(min_freq, max_freq, num_freqs)))
        self.phases = nn.Parameter(torch.randn(2, 5, num_freqs)) if learn_phases else None
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

    def colour_at(self, size: Sequence[int]) -> torch.Tensor:
        """The colour inputs at ``size``: the image resized, then encoded (``'minmax'``: with the min and max of
        the fitted image itself, so every size sees the same affine map)."""
        img = self.image_at(size)
        if self.config['colour'] == 'imagenet':
            return img
        lo = self.image.amin(dim=(0, 2, 3), keepdim=True)
        span = (self.image.amax(dim=(0, 2, 3), keepdim=True) - lo).clamp_min(1e-4)
        return (img - lo) / span - 0.5

    def inputs_at(self, size: Sequence[int]) -> torch.Tensor:
        """The Fourier features ``[1, in_dim, H, W]`` at ``size`` (the module form; without learned phases they
        are constant and cached)."""
        size = (int(size[0]), int(size[1]))
        if min(size) < 1:
            raise ValueError(f'size must be positive, got {size}')
        if self.phases is not None:
            return fourier_features(self.colour_at(size), self.freqs, self.phases, self.config['grid'])
        return self._cached(
            ('inputs',) + size, lambda: fourier_features(self.colour_at(size), self.freqs, None, self.config['grid'])
        )

    def _cached(self, key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """One render size at a time; reset when the size, device or dtype changes."""
        stamp = (key[1:], self.image.device, self.image.dtype)
        if self._cache.get('stamp') != stamp:
            self._cache = {'stamp': stamp}
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _arguments_at(self, size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(arg [H*W, 5, F], colour [H*W, 3])``: frequency times input per pixel, and the colour (cached)."""

        def make():
            colour = self.colour_at(size)
            inputs = torch.cat([position_grid(*size, self.config['grid'], colour.device, colour.dtype), colour], 1)
            return inputs[0].flatten(1).T.contiguous()  # [H*W, 5]

        flat = self._cached(('flat',) + size, make)
        arg = self._cached(('arguments',) + size, lambda: flat.unsqueeze(-1) * self.freqs.to(flat))
        return arg, flat[:, 2:]

    def normalized_inputs_at(self, size: Sequence[int]) -> torch.Tensor:
        """``[H*W, in_dim]``: the Fourier features at ``size`` per pixel, normalised over channels without the
        affine part of the first ChannelNorm (the fast forward's layout; cached without learned phases)."""
        size = (int(size[0]), int(size[1]))
        if min(size) < 1:
            raise ValueError(f'size must be positive, got {size}')
        eps = self.net[0].norm.eps
        if self.phases is None:

            def make():
                flat = self.inputs_at(size)[0].flatten(1).T  # [H*W, C]
                return F.layer_norm(flat, flat.shape[-1:], eps=eps).contiguous()

            return self._cached(('normalized',) + size, make)
        arg, colour = self._arguments_at(size)
        ph = self.phases.to(arg.dtype)
        x = torch.cat([torch.cat([torch.sin(arg + ph[0]), torch.cos(arg + ph[1])], -1).flatten(1), colour], 1)
        return F.layer_norm(x, x.shape[-1:], eps=eps)

    def forward(self, size: Optional[Union[int, Sequence[int]]] = None) -> torch.Tensor:
        """PCA-space features ``[1, k, H, W]`` at ``size`` (default: the image's size).

        Computes ``self.net(self.inputs_at(size))``, faster on CPU with the same result (how:
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
                phases=None if self.phases is None else self.phases.detach().cpu(),
                image=self.image.float().cpu(),
                mean=self.mean.cpu(),
                components=self.components.cpu(),
                extra=extra or {},
            ),
            path,
        )

    @classmethod
    def load(cls, path: str, map_location='cpu') -> 'ImplicitFeatUp':
        """Reads a file of :meth:`save` (or of the first format, whose models used ImageNet colour, pixel-centre
        positions and no phases)."""
        obj = read_checkpoint(path, map_location=map_location)
        fmt = obj.get('format') if isinstance(obj, dict) else None
        if fmt != IMPLICIT_FORMAT and fmt not in _LEGACY_FORMATS:
            raise ValueError(
                f'{path} is not an implicit FeatUp file ({IMPLICIT_FORMAT}); write one with tools/fit_implicit.py'
            )
        config = {**_LEGACY_FORMATS.get(fmt, {}), **obj['config']}
        model = cls(obj['image'], obj['mean'].float(), obj['components'].float(), **config)
        model.net.load_state_dict(obj['net'])
        if model.phases is not None:
            with torch.no_grad():
                model.phases.copy_(obj['phases'])
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


def implicit_kernel(stride: float) -> int:
    """FeatUp's attention window for implicit FeatUp, 29 px at stride 16 (224 px, 14 tokens; windows placed every
    15 px, so they overlap), scaled to the backbone's stride at the fitting resolution."""
    return max(1, int(29 * stride / 16 + 0.5))


def _fit_hw(fit_size, size) -> Tuple[int, int]:
    if fit_size is None:
        return tuple(size)
    hw = (
        (fit_size, fit_size)
        if isinstance(fit_size, int)
        else tuple(fit_size)
        if isinstance(fit_size, (list, tuple))
        else (fit_size,)
    )
    if len(hw) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in hw):
        raise ValueError(f'fit_size must be a positive int or (H, W), got {fit_size!r}')
    return hw


def _jittered_features(backbone: Backbone, image: torch.Tensor, views: Sequence, batch: int) -> torch.Tensor:
    """``[len(views), C, h, w]``: the backbone on each jittered view of ``image``, ``batch`` views per call."""
    out = []
    for i in range(0, len(views), batch):
        out.append(_lr_features(backbone, torch.cat([apply_jitter(image, t) for t in views[i : i + batch]])))
    return torch.cat(out)


def implicit_loss(
    hr: torch.Tensor,
    views: Sequence,
    target: torch.Tensor,
    downsampler: nn.Module,
    scale_net: Optional[nn.Module],
    mag_weight: float = 0.001,
    mag_tv_weight: float = 0.05,
    blur_weight: float = 0.1,
) -> Dict[str, torch.Tensor]:
    """Implicit FeatUp's loss terms for rendered features ``hr [1, k, H, W]``, the views' transforms ``views``
    and their (PCA) backbone features ``target [V, k, h, w]``: ``{'loss_rec', 'loss_mag', 'loss_mag_tv',
    'loss_blur'}`` (weighted; a term with weight 0 is left out). The magnitude ``|hr|`` is concatenated as
    channel 0 before jitter and ``downsampler`` (which takes ``k + 1`` channels), as FeatUp does::

        D = downsampler(cat_t t([|hr|, hr]))            # [V, 1 + k, h, w]
        loss_rec = uncertainty_loss(D[:, 1:], target, scale_net(target))
        loss_mag = mag_weight * mean((D[:, :1] - |target|)^2)
        loss_mag_tv = mag_tv_weight * TV(|hr|);  loss_blur = blur_weight * mean((hr - blur(hr))^2)
    """
    if hr.dim() != 4 or hr.shape[0] != 1 or target.dim() != 4 or target.shape[:2] != (len(views), hr.shape[1]):
        raise ValueError(
            f'implicit_loss: hr must be [1, k, H, W] and target [{len(views)}, k, h, w], got {tuple(hr.shape)}, '
            f'{tuple(target.shape)}'
        )
    both = torch.cat([magnitude(hr), hr], 1)
    pred = downsampler(torch.cat([apply_jitter(both, t) for t in views]), target.shape[-2:])
    scale = scale_net(target) if scale_net is not None else None
    terms = dict(loss_rec=uncertainty_loss(pred[:, 1:], target, scale))
    if mag_weight > 0:
        terms['loss_mag'] = mag_weight * magnitude_loss(pred[:, :1], target)
    if mag_tv_weight > 0:
        terms['loss_mag_tv'] = mag_tv_weight * magnitude_tv_loss(hr)
    if blur_weight > 0:
        terms['loss_blur'] = blur_weight * blur_loss(hr)
    return terms


def fit_implicit(
    image: torch.Tensor,
    backbone: Backbone,
    steps: int = 1200,
    views: int = 10,
    max_pad: int = 30,
    max_zoom: float = 1.8,
    pca_dim: int = 128,
    pca_views: int = 50,
    lr: float = 2e-3,
    downsampler: str = 'attention',
    downsampler_kernel: Optional[int] = None,
    seed: int = 0,
    mag_weight: float = 0.001,
    mag_tv_weight: float = 0.05,
    blur_weight: float = 0.1,
    bank_views: int = 3000,
    view_bank: Optional[bool] = None,
    fit_size: Optional[Union[int, Sequence[int]]] = None,
    uncertainty: bool = True,
    batch_views: int = 16,
    progress: Optional[Callable[[int, int, float], None]] = None,
    **model_kwargs,
) -> Tuple[ImplicitFeatUp, List[float]]:
    """Fit :class:`ImplicitFeatUp` to ``image [1, 3, H, W]`` (ImageNet-normalised RGB) for a frozen ``backbone``
    (a callable images -> ``[B, C, h, w]``; e.g. ChannelNorm'ed ViT tokens), with FeatUp's objective and defaults
    (docs/training.md#fitting-fit_implicit). Returns ``(model, losses)``, the per-step total losses;
    ``progress(step, steps, loss)`` is called after every step. ``model_kwargs`` go to :class:`ImplicitFeatUp`.

    * Views: ``bank_views`` jittered views are computed up front (FeatUp: 3000; the PCA is fitted on the first
      ``pca_views``) and each step draws its ``views`` targets from them; ``bank_views=0``: fresh views every
      step. ``view_bank``: True = the bank is the PCA views alone (the backbone runs ``pca_views`` times in all;
      the CPU preset), False = fresh views; it overrides ``bank_views``.
    * ``downsampler``: ``'attention'`` or ``'blur'`` over the PCA features plus their magnitude channel; its
      window ``downsampler_kernel`` defaults to :func:`implicit_kernel` of the backbone's stride at the fitting
      resolution (29 at stride 16).
    * Loss: the uncertainty loss (``uncertainty=False``: plain MSE) + ``mag_weight`` x magnitude loss +
      ``mag_tv_weight`` x TV of ``|F|`` + ``blur_weight`` x blur loss; NAdam at ``lr``.
    * ``fit_size``: render the features at this size (int or ``(H, W)``) while fitting; the model still answers
      at any resolution, but detail finer than ``fit_size`` is only constrained by the colour inputs.
    * ``batch_views``: views per backbone call while building the bank."""
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f'fit_implicit expects one image [1, 3, H, W], got {tuple(image.shape)}')
    if steps < 0 or views < 1 or pca_views < 1 or batch_views < 1:
        raise ValueError(
            f'need steps >= 0, views >= 1, pca_views >= 1, batch_views >= 1; got {steps}, {views}, {pca_views}, '
            f'{batch_views}'
        )
    for name, value in (('mag_weight', mag_weight), ('mag_tv_weight', mag_tv_weight), ('blur_weight', blur_weight)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f'{name} must be a finite number >= 0, got {value}')
    if view_bank is not None:
        bank_views = pca_views if view_bank else 0
    if isinstance(bank_views, bool) or not isinstance(bank_views, int) or bank_views < 0:
        raise ValueError(f'bank_views must be an int >= 0, got {bank_views!r}')
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    size = tuple(image.shape[-2:])
    fit_hw = _fit_hw(fit_size, size)
    # the views: PCA on the first pca_views (FeatUp: 50), the bank (FeatUp: 3000) drawn as the same sequence
    drawn = [sample_jitter(size, max_pad, max_zoom, generator=gen) for _ in range(max(pca_views, bank_views))]
    first = _jittered_features(backbone, image, drawn[:pca_views], batch_views)
    mean, comps = fit_pca(first.permute(0, 2, 3, 1).reshape(-1, first.shape[1]).float(), pca_dim)
    lr_size = first.shape[-2:]
    model = ImplicitFeatUp(image, mean, comps, **model_kwargs).to(image.device)
    bank_t, bank = drawn[:bank_views], None
    if bank_views:
        parts = [model.to_pca(first[:bank_views].to(model.components.dtype))]
        for i in range(pca_views, bank_views, batch_views):
            feats = _jittered_features(backbone, image, drawn[i : min(i + batch_views, bank_views)], batch_views)
            parts.append(model.to_pca(feats.to(model.components.dtype)))
        bank = torch.cat(parts)
    del first
    kernel = downsampler_kernel or implicit_kernel(fit_hw[0] / lr_size[0])
    down = build_downsampler(downsampler, model.pca_dim + 1, kernel).to(image.device)
    scale_net = UncertaintyHead(model.pca_dim).to(image.device) if uncertainty else None
    params = list(model.parameters()) + list(down.parameters())
    params += list(scale_net.parameters()) if scale_net is not None else []
    opt = torch.optim.NAdam(params, lr=lr)
    model.train(), down.train()
    losses: List[float] = []
    for step in range(steps):
        hr = model(fit_hw)
        if bank is not None:
            idx = [int(torch.randint(len(bank_t), (), generator=gen)) for _ in range(views)]
            ts, target = [bank_t[i] for i in idx], bank[idx]
        else:
            ts = [sample_jitter(size, max_pad, max_zoom, generator=gen) for _ in range(views)]
            target = model.to_pca(_jittered_features(backbone, image, ts, views).to(model.components.dtype))
        terms = implicit_loss(hr, ts, target, down, scale_net, mag_weight, mag_tv_weight, blur_weight)
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, steps, losses[-1])
    return model.eval(), losses
