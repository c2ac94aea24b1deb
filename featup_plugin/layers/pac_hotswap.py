"""Hot-swap: turn selected ``nn.Conv2d`` layers of a (pretrained) model into pixel-adaptive convolutions, guided by
a tensor captured during the model's own forward, that start as the original layers and keep its state-dict keys::

    model = pac_hot_swap(model, ['layer3.*.conv2', 'layer4.*.conv2'], guidance='layer1')

Derivation / details: docs/pac.md#hot-swap
"""

from __future__ import annotations

import fnmatch
import re
from typing import Callable, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.pac import PacConv2d

__all__ = ['pac_hot_swap', 'PacHotSwapConv2d', 'GuidanceSource', 'swapped_layers']

Targets = Union[str, Sequence[str], Callable[[str, nn.Module], bool]]


def _first_tensor(value, index: Optional[int] = None):
    if index is not None:
        if isinstance(value, dict):
            value = list(value.values())
        return value[index]
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


class GuidanceSource:
    """Captures the guidance tensor during the model's forward (hooks) and serves it resized per layer."""

    def __init__(self, model: nn.Module, guidance: str, detach: bool = False, mode: str = 'bilinear'):
        if not isinstance(guidance, str) or not guidance:
            raise TypeError(f"guidance must be 'input', a module name, '<name>[i]' or '<name>:input', got {guidance!r}")
        self.spec, self.detach, self.mode = guidance, detach, mode
        self.tensor: Optional[torch.Tensor] = None
        self._cache: dict = {}
        self.index: Optional[int] = None
        self.handles = []
        if guidance == 'input':
            self.handles.append(model.register_forward_pre_hook(self._capture_input, with_kwargs=True))
        else:
            name, want_input = guidance, False
            if name.endswith(':input'):
                name, want_input = name[: -len(':input')], True
            m = re.fullmatch(r'(.+)\[(\d+)\]', name)
            if m:
                name, self.index = m.group(1), int(m.group(2))
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise ValueError(f'guidance: the model has no submodule named {name!r}') from None
            if want_input:
                self.handles.append(module.register_forward_pre_hook(self._capture_input, with_kwargs=True))
            else:
                self.handles.append(module.register_forward_hook(self._capture_output))
        # Drop the captured tensor after each full forward, so that no later call sees a stale guidance.
        self.handles.append(model.register_forward_hook(self._clear, always_call=True))

    def _store(self, t) -> None:
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or not t.is_floating_point():
            raise ValueError(
                f'guidance {self.spec!r}: expected a floating point [B, C, H, W] tensor, got '
                f'{type(t).__name__ if not isinstance(t, torch.Tensor) else tuple(t.shape)}'
            )
        self.tensor = t.detach() if self.detach else t
        self._cache = {}

    def _capture_input(self, module, args, kwargs):
        t = _first_tensor(list(args), self.index) if args else None
        if t is None:
            for key in ('inputs', 'input', 'x', 'img', 'images'):
                if isinstance(kwargs.get(key), torch.Tensor):
                    t = kwargs[key]
                    break
        if t is None:
            t = _first_tensor(kwargs)
        self._store(t)

    def _capture_output(self, module, args, output):
        self._store(_first_tensor(output, self.index))

    def _clear(self, *unused):
        self.tensor, self._cache = None, {}

    def get(self, like: torch.Tensor) -> torch.Tensor:
        """The guidance resized to ``like``'s spatial size (cached per size within a forward)."""
        if self.tensor is None:
            raise RuntimeError(
                f'PAC hot-swap: no guidance captured from {self.spec!r} yet; the guidance must be '
                'produced before the swapped layers run, within the same forward of the model'
            )
        g = self.tensor
        if g.shape[0] != like.shape[0]:
            raise RuntimeError(
                f'PAC hot-swap: guidance {self.spec!r} has batch {g.shape[0]} but the layer input '
                f'has batch {like.shape[0]}'
            )
        size = tuple(like.shape[-2:])
        if size not in self._cache:
            if tuple(g.shape[-2:]) != size:
                g = F.interpolate(g, size=size, mode=self.mode, align_corners=False)
            self._cache[size] = g
        return self._cache[size].to(like.dtype)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


class PacHotSwapConv2d(PacConv2d):
    """A PacConv2d that takes its guidance from a :class:`GuidanceSource` and blends its adapting kernel with
    1: ``K = 1 + blend * (K_pac(guidance_scale * f) - 1)``; ``forward(input)`` like the Conv2d it replaces.
    ``blend`` starts at 0, so the layer starts as the Conv2d (why ``blend``: docs/pac.md#initialisation-why-blend)."""

    def __init__(self, *args, init_scale: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.guidance_scale = nn.Parameter(torch.tensor(float(init_scale)))
        self.blend = nn.Parameter(torch.zeros(()))
        self.source: Optional[GuidanceSource] = None

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, source: Optional[GuidanceSource] = None, init_scale: float = 1.0, **pac_kwargs
    ) -> 'PacHotSwapConv2d':
        layer = super().from_conv(conv, init_scale=init_scale, **pac_kwargs)
        layer.source = source
        if not conv.weight.requires_grad:
            layer.weight.requires_grad_(False)
            if layer.bias is not None:
                layer.bias.requires_grad_(conv.bias.requires_grad)
        layer.train(conv.training)
        return layer

    def forward(
        self, input: torch.Tensor, guidance: Optional[torch.Tensor] = None, kernel: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        if guidance is None and kernel is None:
            if self.source is None:
                raise RuntimeError('PacHotSwapConv2d has no guidance source; pass guidance= or kernel=')
            guidance = self.source.get(input)
        if kernel is None:
            kernel = self.compute_kernel(guidance * self.guidance_scale.to(guidance.dtype))
            kernel = 1 + self.blend.to(kernel.dtype) * (kernel - 1)
        return super().forward(input, kernel=kernel)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f', guidance={self.source.spec!r}' if self.source is not None else '')


# Conv2d subclasses whose forward is the plain convolution (mmcv's wrapper only adds empty-tensor support).
_PLAIN_CONV_SUBCLASSES = {('mmcv.cnn.bricks.wrappers', 'Conv2d')}


def _check_plain_conv(name: str, conv: nn.Conv2d) -> None:
    cls = type(conv)
    if cls.forward is nn.Conv2d.forward or (cls.__module__, cls.__name__) in _PLAIN_CONV_SUBCLASSES:
        return
    raise ValueError(
        f'pac_hot_swap: cannot swap {name!r}: {cls.__module__}.{cls.__name__} overrides nn.Conv2d.forward '
        '(e.g. dynamic "same" padding or weight standardisation), which a PAC layer would not reproduce'
    )


def _select(model: nn.Module, targets: Targets) -> List[str]:
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and not isinstance(m, PacConv2d)}
    if callable(targets) and not isinstance(targets, str):
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and targets(n, m)]
        if not names:
            raise ValueError('pac_hot_swap: the predicate selected no nn.Conv2d layer')
        return names
    patterns = [targets] if isinstance(targets, str) else list(targets)
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise TypeError(
            'pac_hot_swap: targets must be a layer name / glob pattern, a list of them, or a predicate '
            '(name, module) -> bool'
        )
    modules = dict(model.named_modules())
    names: List[str] = []
    for p in patterns:
        if p in modules and not isinstance(modules[p], nn.Conv2d):
            raise TypeError(f'pac_hot_swap: {p!r} is a {type(modules[p]).__name__}, not an nn.Conv2d')
        hits = [n for n in convs if fnmatch.fnmatchcase(n, p)]
        if not hits:
            sample = ', '.join(list(convs)[:8])
            raise ValueError(f'pac_hot_swap: target {p!r} matches no nn.Conv2d of the model (some are: {sample})')
        names += [n for n in hits if n not in names]
    return names


def pac_hot_swap(
    model: nn.Module,
    targets: Targets,
    guidance: str = 'input',
    kernel_type: str = 'gaussian',
    init_scale: float = 1.0,
    detach_guidance: bool = False,
    smooth_kernel_type: str = 'none',
) -> nn.Module:
    """Replaces the ``targets`` Conv2d layers of ``model`` (in place) by :class:`PacHotSwapConv2d` guided by
    ``guidance``; returns ``model``. At initialisation the swapped model computes what the original did.

    Args:
        model: any ``nn.Module``.
        targets: a layer name or glob pattern (``'layer4.*.conv2'``), a list of them, or a predicate
            ``(name, module) -> bool``.
        guidance: ``'input'`` (the model's first tensor argument, or its ``inputs=`` / ``x=`` keyword), a module
            name (its output; ``'<name>[i]'`` for element ``i`` of a tuple / list / dict output) or
            ``'<name>:input'`` (that module's first tensor input; ``'backbone:input'`` in an mmseg segmentor is the
            current crop). It is resized (bilinear) to each swapped layer's input and must be produced before the
            swapped layers run in each forward.
        kernel_type, smooth_kernel_type: as :class:`~featup_plugin.ops.PacConv2d`.
        init_scale: initial ``guidance_scale`` (the Gaussian's bandwidth).
        detach_guidance: no gradient into the guidance.

    Raises:
        ValueError: a target matching no Conv2d, a guidance naming no submodule, or a layer that cannot be swapped
            (grouped convolutions, even kernel sizes, non-zero padding modes, Conv2d subclasses with their own
            forward such as timm's ``Conv2dSame`` or weight-standardised convs), naming the layer.
        TypeError: a ``model`` that is not an ``nn.Module``, malformed ``targets`` (or one naming a module that is
            not a Conv2d), a ``guidance`` that is not a string.

    Details and the paper's VGG-16 FCN recipe: docs/pac.md#hot-swap
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f'pac_hot_swap: model must be an nn.Module, got {type(model).__name__}')
    names = _select(model, targets)
    source = GuidanceSource(model, guidance, detach=detach_guidance)
    try:
        new = {}
        for name in names:
            conv = model.get_submodule(name)
            _check_plain_conv(name, conv)
            try:
                new[name] = PacHotSwapConv2d.from_conv(
                    conv,
                    source=source,
                    init_scale=init_scale,
                    kernel_type=kernel_type,
                    smooth_kernel_type=smooth_kernel_type,
                )
            except ValueError as exc:
                raise ValueError(f'pac_hot_swap: cannot swap {name!r}: {exc}') from None
    except Exception:
        source.remove()
        raise
    for name, layer in new.items():
        parent_name, _, child = name.rpartition('.')
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
    return model


def swapped_layers(model: nn.Module) -> List[str]:
    """Names of the hot-swapped layers of ``model``."""
    return [n for n, m in model.named_modules() if isinstance(m, PacHotSwapConv2d)]
