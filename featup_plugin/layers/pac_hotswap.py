"""Hot-swap: turn selected ``nn.Conv2d`` layers of a (pretrained) model into pixel-adaptive convolutions, guided by
a tensor captured during the model's own forward, that start as the original layers and keep its state-dict keys::

    model = pac_hot_swap(model, ['layer3.*.conv2', 'layer4.*.conv2'], guidance='layer1')
    vgg = pac_hot_swap(vgg, preset='fcn8s')  # the paper's FCN recipe: features.14/21/28 guided by features.8

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

__all__ = ['pac_hot_swap', 'PacHotSwapConv2d', 'GuidanceSource', 'swapped_layers', 'PRESETS']

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


# torchvision's VGG-16 ``features`` (``make_layers(cfgs['D'])``, no batch norm): 'C<n>' a 3x3 conv with n outputs
# followed by its ReLU, 'M' a max pool. Indices: conv2_2 = 7 (its ReLU 8), conv3_3 = 14, conv4_3 = 21, conv5_3 = 28.
_VGG16_CFG = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M']

# name -> (targets, guidance), relative to the VGG-16 features module.
PRESETS = {
    # PAC paper (Su et al., CVPR 2019), FCN-8s: conv3_3, conv4_3, conv5_3 swapped, guided by conv2_2 after its ReLU.
    'fcn8s': (['14', '21', '28'], '8'),
}


def _is_vgg16_features(module: nn.Module) -> bool:
    if not isinstance(module, nn.Sequential):
        return False
    layers = list(module.children())
    expected = []
    for v in _VGG16_CFG:
        expected += [nn.MaxPool2d] if v == 'M' else [nn.Conv2d, nn.ReLU]
    if len(layers) != len(expected) or not all(isinstance(m, t) for m, t in zip(layers, expected)):
        return False
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    return [c.out_channels for c in convs] == [v for v in _VGG16_CFG if v != 'M'] and all(
        c.kernel_size == (3, 3) for c in convs
    )


def _resolve_preset(model: nn.Module, preset: str):
    """The preset's (targets, guidance) as module names of ``model``: relative to its one VGG-16 ``features``
    module, named ``features`` or ``<parent>.features`` (or ``model`` itself when it is that Sequential)."""
    if preset not in PRESETS:
        raise ValueError(f'pac_hot_swap: unknown preset {preset!r}; presets are {sorted(PRESETS)}')
    found = [
        n for n, m in model.named_modules() if (n == 'features' or n.endswith('.features')) and _is_vgg16_features(m)
    ]
    if not found and _is_vgg16_features(model):
        found = ['']
    if len(found) != 1:
        raise ValueError(
            f'pac_hot_swap: preset {preset!r} needs exactly one torchvision VGG-16 features module (the '
            "nn.Sequential of vgg16().features, named 'features' or '<parent>.features', or the model itself), "
            f'found {found or "none"}'
        )
    prefix = found[0] + '.' if found[0] else ''
    targets, guidance = PRESETS[preset]
    return [prefix + t for t in targets], prefix + guidance


def pac_hot_swap(
    model: nn.Module,
    targets: Optional[Targets] = None,
    guidance: Optional[str] = None,
    kernel_type: str = 'gaussian',
    init_scale: float = 1.0,
    detach_guidance: bool = False,
    smooth_kernel_type: str = 'none',
    preset: Optional[str] = None,
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
            swapped layers run in each forward. Default ``'input'``.
        kernel_type, smooth_kernel_type: as :class:`~featup_plugin.ops.PacConv2d`.
        init_scale: initial ``guidance_scale`` (the Gaussian's bandwidth).
        detach_guidance: no gradient into the guidance.
        preset: a named recipe that sets ``targets`` and ``guidance`` (which must then be left ``None``; giving
            them too is a ``ValueError``). ``'fcn8s'``, the PAC paper's FCN-8s: targets ``features.14``,
            ``features.21``, ``features.28`` (conv3_3, conv4_3, conv5_3) guided by ``features.8`` (conv2_2 after
            its ReLU) of a torchvision VGG-16 (no batch norm). The names are relative to the model's one VGG-16
            features module, found by its layout: a submodule named ``features`` or ``<parent>.features``
            (``torchvision.models.vgg16()``, or e.g. ``backbone.features`` when nested), or the model itself when
            it is that ``nn.Sequential`` (``make_layers(cfgs['D'])``: ``'14'`` ... guided by ``'8'``).

    Raises:
        ValueError: a target matching no Conv2d, a guidance naming no submodule, an unknown preset (listing the
            presets), a preset with explicit targets / guidance, a preset whose VGG-16 features module is missing
            or ambiguous, no targets without a preset, or a layer that cannot be swapped
            (grouped convolutions, even kernel sizes, non-zero padding modes, Conv2d subclasses with their own
            forward such as timm's ``Conv2dSame`` or weight-standardised convs), naming the layer.
        TypeError: a ``model`` that is not an ``nn.Module``, malformed ``targets`` (or one naming a module that is
            not a Conv2d), a ``guidance`` that is not a string.

    Details and the paper's VGG-16 FCN recipe: docs/pac.md#hot-swap
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f'pac_hot_swap: model must be an nn.Module, got {type(model).__name__}')
    if preset is not None:
        if targets is not None or guidance is not None:
            raise ValueError(
                f'pac_hot_swap: preset {preset!r} sets targets and guidance; pass either a preset or '
                'targets / guidance, not both'
            )
        targets, guidance = _resolve_preset(model, preset)
    elif targets is None:
        raise ValueError(f'pac_hot_swap: pass targets (or a preset: {sorted(PRESETS)})')
    if guidance is None:
        guidance = 'input'
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
