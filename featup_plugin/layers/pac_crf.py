"""PAC-CRF (Su et al., CVPR 2019, section 5), written from the paper: mean-field inference of a CRF over the
labels whose pairwise term is a pixel-adaptive pooling of the label distribution, unrolled for a fixed number of
iterations and trained end to end::

    crf = PacCRF(num_classes=21, num_iters=5)           # two fixed position + colour kernels, Potts compatibility
    refined_logits = crf(logits, rgb)                   # rgb [B, 3, H, W] in [0, 1], resized to the logits' size

Derivation (energy, updates, which one is monotone) / details: docs/pac.md#pac-crf
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.pac import pac_kernel2d, pac_pool2d

__all__ = ['PacCRF', 'DEFAULT_CRF_KERNELS', 'CRF_FEATURES', 'CRF_UPDATES']

CRF_FEATURES = ('xy', 'rgb', 'xyrgb', 'learned')
CRF_UPDATES = ('parallel', 'sequential')
CRF_COMPATS = ('potts', 'potts_fixed')
#: A local and a dilated (wider) position + colour kernel, as DenseCRF's appearance kernel in two windows.
DEFAULT_CRF_KERNELS = (
    dict(features='xyrgb', kernel_size=5, dilation=1, theta_xy=3.0, theta_rgb=13.0, weight=0.1),
    dict(features='xyrgb', kernel_size=5, dilation=3, theta_xy=6.0, theta_rgb=13.0, weight=0.1),
)
_KERNEL_KEYS = {
    'features',
    'kernel_size',
    'dilation',
    'weight',
    'theta_xy',
    'theta_rgb',
    'spatial_filter',
    'feature_channels',
    'hidden_channels',
}


def _positive(spec: dict, key: str, default, kind=float):
    v = spec.get(key, default)
    ok = not isinstance(v, bool) and isinstance(v, (int, float) if kind is float else int) and v > 0
    if not ok or (kind is float and not math.isfinite(v)):
        raise ValueError(f'PacCRF kernel {spec}: {key} must be a positive {kind.__name__}, got {v!r}')
    return kind(v)


def _parse_kernel(spec) -> dict:
    if not isinstance(spec, dict):
        raise TypeError(f'PacCRF: each kernel must be a dict, got {type(spec).__name__}')
    unknown = set(spec) - _KERNEL_KEYS
    if unknown:
        raise ValueError(f'PacCRF kernel {spec}: unknown keys {sorted(unknown)}; allowed: {sorted(_KERNEL_KEYS)}')
    feats = spec.get('features', 'xyrgb')
    if feats not in CRF_FEATURES:
        raise ValueError(f'PacCRF kernel {spec}: features must be one of {CRF_FEATURES}, got {feats!r}')
    k = _positive(spec, 'kernel_size', 5, int)
    if k < 3 or k % 2 == 0:
        raise ValueError(f'PacCRF kernel {spec}: kernel_size must be odd and >= 3, got {k}')
    weight = spec.get('weight', 0.1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise ValueError(f'PacCRF kernel {spec}: weight must be a finite number, got {weight!r}')
    out = dict(features=feats, kernel_size=k, dilation=_positive(spec, 'dilation', 1, int), weight=float(weight))
    out['theta_xy'] = _positive(spec, 'theta_xy', 3.0) if feats in ('xy', 'xyrgb') or 'theta_xy' in spec else None
    if feats in ('rgb', 'xyrgb'):
        out['theta_rgb'] = _positive(spec, 'theta_rgb', 13.0)
    elif 'theta_rgb' in spec:
        raise ValueError(f"PacCRF kernel {spec}: theta_rgb applies to features 'rgb' / 'xyrgb' only")
    if feats == 'learned':
        out['feature_channels'] = _positive(spec, 'feature_channels', 8, int)
        out['hidden_channels'] = _positive(spec, 'hidden_channels', 16, int)
    elif 'feature_channels' in spec or 'hidden_channels' in spec:
        raise ValueError(f"PacCRF kernel {spec}: feature_channels / hidden_channels apply to features='learned' only")
    sf = spec.get('spatial_filter', False)
    if not isinstance(sf, bool):
        raise ValueError(f'PacCRF kernel {spec}: spatial_filter must be a bool, got {sf!r}')
    out['spatial_filter'] = sf
    return out


class _PairwiseKernel(nn.Module):
    """One pairwise kernel: ``k_ij = weight * W[p_j - p_i] * exp(-|p_i - p_j|^2 / (2 theta_xy^2))
    * K(f_i, f_j)`` over a ``kernel_size`` window (dilated), the centre (``j = i``) excluded; symmetric."""

    def __init__(self, spec: dict, guidance_channels: int):
        super().__init__()
        self.spec = spec
        k, d = spec['kernel_size'], spec['dilation']
        self.kernel_size, self.dilation, self.features = k, d, spec['features']
        self.weight = nn.Parameter(torch.tensor(spec['weight']))
        # W[t]; symmetrised in use (tap t and tap T-1-t are opposite offsets)
        self.spatial = nn.Parameter(torch.ones(k * k)) if spec['spatial_filter'] else None
        self.feature_net = None
        if self.features == 'learned':
            h = spec['hidden_channels']
            self.feature_net = nn.Sequential(
                nn.Conv2d(guidance_channels, h, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(h, spec['feature_channels'], 3, 1, 1),
            )

    @property
    def needs_guidance(self) -> bool:
        return self.features != 'xy'

    def position(self, like: torch.Tensor) -> torch.Tensor:
        """``[1, k*k, 1, 1]``: ``exp(-|dp|^2 / (2 theta_xy^2))`` per tap (1 without ``theta_xy``), 0 at the centre
        (no message from a pixel to itself)."""
        k, d = self.kernel_size, self.dilation
        off = (torch.arange(k, dtype=like.dtype, device=like.device) - (k - 1) // 2) * d
        d2 = (off[:, None] ** 2 + off[None, :] ** 2).flatten()
        theta = self.spec['theta_xy']
        pos = torch.ones_like(d2) if theta is None else torch.exp(-d2 / (2 * theta**2))
        pos[(k * k) // 2] = 0
        return pos.view(1, k * k, 1, 1)

    def spatial_filter(self) -> Optional[torch.Tensor]:
        """The symmetric spatial filter ``[k*k]`` (``None`` without ``spatial_filter``)."""
        return None if self.spatial is None else 0.5 * (self.spatial + self.spatial.flip(0))

    def forward(self, rgb: Optional[torch.Tensor], size: Tuple[int, int], like: torch.Tensor):
        """``[B or 1, k*k, H, W]``: ``k_ij`` for every pixel ``i`` and tap ``j`` (0 on taps outside the image)."""
        k, d = self.kernel_size, self.dilation
        pad = d * (k - 1) // 2
        if self.features == 'xy':
            feats = like.new_zeros(1, 1, *size)  # K = 1 inside the image, 0 on padding taps
        elif self.features == 'learned':
            feats = self.feature_net(rgb.to(like.dtype))
        else:
            feats = rgb.to(like.dtype) * (255.0 / self.spec['theta_rgb'])  # theta_rgb in 0-255 colour units
        kern = pac_kernel2d(feats, k, 1, pad, d)
        w = self.position(like) * self.weight.to(like.dtype)
        sf = self.spatial_filter()
        if sf is not None:
            w = w * sf.to(like.dtype).view(1, -1, 1, 1)
        return kern * w

    def extra_repr(self) -> str:
        s = self.spec
        extra = ''.join(f', {n}={s[n]}' for n in ('theta_xy', 'theta_rgb') if s.get(n) is not None)
        return f'{s["features"]}, kernel_size={s["kernel_size"]}, dilation={s["dilation"]}{extra}'


class PacCRF(nn.Module):
    """Mean-field inference of a CRF with PAC pairwise messages, on the logits of any segmentation model.

    Energy (labels ``x``): ``E(x) = sum_i -logits_i(x_i) + sum_{i<j} mu(x_i, x_j) k_ij``,
    ``k_ij = sum_m w_m W_m[p_j - p_i] G_m(p_i, p_j) K_m(f_i, f_j)`` over each kernel's local window. Starting from
    ``Q = softmax(logits)``, each iteration computes ``out_i = logits_i - mu (sum_j k_ij Q_j)`` and
    ``Q = softmax(out)``; the module returns the last ``out`` (the refined logits, ``log Q`` up to a constant).

    Args:
        num_classes: labels ``L`` (the logits' channels).
        num_iters: mean-field iterations, unrolled (gradients flow through all of them); 0 returns the logits.
        kernels: pairwise kernels, dicts with ``features`` (``'xy'``: position only; ``'rgb'`` / ``'xyrgb'``:
            colour / position + colour, fixed Gaussians ``exp(-|dp|^2 / 2 theta_xy^2 - |dI|^2 / 2 theta_rgb^2)``,
            ``theta_xy`` in pixels of the logits' grid, ``theta_rgb`` in 0-255 colour units; ``'learned'``: a Gaussian
            on features ``f = net(rgb)`` (two 3x3 convs, ``hidden_channels`` -> ``feature_channels``) trained end to
            end, with ``theta_xy`` optional), ``kernel_size`` (odd, >= 3), ``dilation``, ``weight`` (initial
            learnable ``w_m``), ``spatial_filter`` (a learnable symmetric ``W_m`` over the window, initialised to
            1). Default: :data:`DEFAULT_CRF_KERNELS`.
        compat: ``'potts'`` (learnable ``mu``, initialised to Potts ``1 - I``, kept symmetric: ``(M + M^T) / 2``)
            or ``'potts_fixed'``.
        update: ``'parallel'`` (every pixel at once: the paper's, one PAC per kernel per iteration) or
            ``'sequential'`` (pixels in ``s x s`` colour groups, ``s`` = the largest window radius + 1, one group
            after the other: block coordinate descent, never increases the mean-field free energy
            (:meth:`energy`); ``s^2`` strided PACs of the same total cost per iteration). Parallel updates can
            increase it (docs/pac.md#which-update-is-monotone).
        guidance_channels: channels of the guidance given to ``'learned'`` kernels (RGB: 3).

    ``forward(logits [B, L, H, W], rgb [B, C, h, w] or None)``: ``rgb`` (RGB in [0, 1]) is resized to the logits'
    size; needed unless every kernel is ``'xy'``.
    """

    def __init__(
        self,
        num_classes: int,
        num_iters: int = 5,
        kernels: Sequence[dict] = DEFAULT_CRF_KERNELS,
        compat: str = 'potts',
        update: str = 'parallel',
        guidance_channels: int = 3,
    ):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f'PacCRF: num_classes must be an int >= 2, got {num_classes!r}')
        if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 0:
            raise ValueError(f'PacCRF: num_iters must be an int >= 0, got {num_iters!r}')
        if update not in CRF_UPDATES:
            raise ValueError(f'PacCRF: update must be one of {CRF_UPDATES}, got {update!r}')
        if compat not in CRF_COMPATS:
            raise ValueError(f'PacCRF: compat must be one of {CRF_COMPATS}, got {compat!r}')
        if isinstance(kernels, dict) or not isinstance(kernels, (list, tuple)) or not kernels:
            raise ValueError('PacCRF: kernels must be a non-empty list of kernel dicts')
        self.num_classes, self.num_iters, self.update, self.compat_type = num_classes, num_iters, update, compat
        self.kernels = nn.ModuleList(_PairwiseKernel(_parse_kernel(s), guidance_channels) for s in kernels)
        potts = 1.0 - torch.eye(num_classes)
        if compat == 'potts':
            self.compat = nn.Parameter(potts)
        else:
            self.register_buffer('compat', potts)
        radius = max(m.dilation * (m.kernel_size - 1) // 2 for m in self.kernels)
        self.group_period = radius + 1  # pixels this far apart in both axes never share a window

    @property
    def needs_guidance(self) -> bool:
        return any(m.needs_guidance for m in self.kernels)

    def compatibility(self) -> torch.Tensor:
        """The symmetric label compatibility ``mu [L, L]``."""
        return 0.5 * (self.compat + self.compat.t())

    # -- pieces, public for tests and analysis ------------------------------------------------------------
    def pairwise_kernels(
        self, rgb: Optional[torch.Tensor], logits: torch.Tensor
    ) -> List[Tuple[torch.Tensor, int, int]]:
        """``[(k [B or 1, k*k, H, W], kernel_size, dilation)]``: the kernels summed per window geometry."""
        b, _, h, w = logits.shape
        if rgb is not None:
            if rgb.dim() != 4 or rgb.shape[0] != b:
                raise ValueError(f'PacCRF: guidance must be [B={b}, C, h, w], got {tuple(rgb.shape)}')
            if tuple(rgb.shape[-2:]) != (h, w):
                shrink = rgb.shape[-2] > h and rgb.shape[-1] > w
                rgb = F.interpolate(rgb, size=(h, w), mode='bilinear', align_corners=False, antialias=shrink)
        elif self.needs_guidance:
            raise ValueError("PacCRF: kernels other than features='xy' need the guidance image (rgb)")
        groups: Dict[Tuple[int, int], torch.Tensor] = {}
        for m in self.kernels:
            key = (m.kernel_size, m.dilation)
            kern = m(rgb, (h, w), logits)
            groups[key] = kern if key not in groups else groups[key] + kern
        return [(kern, k, d) for (k, d), kern in groups.items()]

    @staticmethod
    def messages(q: torch.Tensor, kernels, region: Optional[Tuple[int, int, int]] = None) -> torch.Tensor:
        """``sum_j k_ij Q_j`` ``[B, L, H, W]``; with ``region=(a, b, s)`` only at pixels ``(a + s*m, b + s*n)``."""
        total = None
        for kern, k, d in kernels:
            pad = d * (k - 1) // 2
            kern = kern.expand(q.shape[0], -1, -1, -1)
            if region is None:
                msg = pac_pool2d(q, kern, k, 1, pad, d)
            else:  # strided PAC on the padded map cropped at (a, b): outputs at rows a + s*m, columns b + s*n
                a, c, s = region
                qp = F.pad(q, [pad, pad, pad, pad])[:, :, a:, c:]
                msg = pac_pool2d(qp, kern[:, :, a::s, c::s].contiguous(), k, s, 0, d)
            total = msg if total is None else total + msg
        return total

    def step(self, logits: torch.Tensor, q: torch.Tensor, kernels) -> Tuple[torch.Tensor, torch.Tensor]:
        """One mean-field iteration with ``self.update``: ``(out, Q)``, ``Q = softmax(out)``."""
        mu = self.compatibility().to(q.dtype)
        if self.update == 'parallel':
            out = logits - torch.einsum('lk,bkhw->blhw', mu, self.messages(q, kernels))
            return out, out.softmax(1)
        s = self.group_period
        out = logits
        for a in range(s):
            for c in range(s):
                m = self.messages(q, kernels, (a, c, s))
                new = logits[:, :, a::s, c::s] - torch.einsum('lk,bkhw->blhw', mu, m)
                out, q = out.clone(), q.clone()  # q was saved by the PAC above; the next group reads the update
                out[:, :, a::s, c::s] = new
                q[:, :, a::s, c::s] = new.softmax(1)
        return out, q

    def energy(self, logits: torch.Tensor, q: torch.Tensor, kernels) -> torch.Tensor:
        """The mean-field free energy ``[B]`` of ``Q`` (what ``'sequential'`` never increases):
        ``F(Q) = -sum_i <Q_i, logits_i> + 1/2 sum_i sum_j k_ij Q_i^T mu Q_j + sum_i <Q_i, log Q_i>``."""
        mu = self.compatibility().to(q.dtype)
        pair = torch.einsum('lk,bkhw->blhw', mu, self.messages(q, kernels))
        ent = torch.xlogy(q, q)
        return (-q * logits + 0.5 * q * pair + ent).flatten(1).sum(1)

    def forward(self, logits: torch.Tensor, rgb: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not isinstance(logits, torch.Tensor) or logits.dim() != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f'PacCRF: logits must be [B, {self.num_classes}, H, W], got '
                f'{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}'
            )
        if self.num_iters == 0:
            return logits
        dtype = logits.dtype
        x = logits.float() if dtype in (torch.float16, torch.bfloat16) else logits
        kernels = self.pairwise_kernels(None if rgb is None else rgb.to(x.dtype), x)
        q = x.softmax(1)
        out = x
        for _ in range(self.num_iters):
            out, q = self.step(x, q, kernels)
        return out.to(dtype)

    def extra_repr(self) -> str:
        return (
            f'num_classes={self.num_classes}, num_iters={self.num_iters}, update={self.update!r}, '
            f'compat={self.compat_type!r}'
        )
