"""mmseg registration of the PAC hot-swap: ``model = dict(type='PacHotSwap', model=<segmentor cfg>, targets=...)``
(or ``preset='fcn8s'`` instead of ``targets`` / ``guidance``).

Builds the segmentor, then replaces its ``targets`` Conv2d layers by PAC layers (see
``featup_plugin.layers.pac_hotswap``).
The swapped layers keep the Conv2d's state-dict keys, so ``load_from = <checkpoint of the original segmentor>``
loads the pretrained weights into them (the two new parameters per layer, ``guidance_scale`` and ``blend``, are
reported as missing and keep their initial values, with which the model computes exactly what the checkpoint
did). ``tools/model_converters/pac_hotswap.py`` wraps any segmentor config this way from the command line.
"""

from __future__ import annotations

from typing import Optional

from mmseg.registry import MODELS

from ...layers.pac_hotswap import PRESETS, pac_hot_swap


@MODELS.register_module(name='PacHotSwap')
def build_pac_hot_swap(
    model: dict,
    targets=None,
    guidance: Optional[str] = None,
    kernel_type: str = 'gaussian',
    init_scale: float = 1.0,
    detach_guidance: bool = False,
    smooth_kernel_type: str = 'none',
    preset: Optional[str] = None,
    data_preprocessor=None,
):
    """``targets`` / ``guidance`` or a ``preset`` as ``pac_hot_swap`` (``preset='fcn8s'``: the PAC paper's FCN
    recipe for a segmentor whose backbone holds a torchvision VGG-16 ``features`` module). ``guidance`` defaults to
    the backbone's input: the normalised image of the current crop, also under slide inference (``'input'`` would
    be the whole batch tensor given to the segmentor). ``data_preprocessor`` (which mmengine's Runner adds from a
    config's top-level ``data_preprocessor``) goes to the segmentor unless it has its own."""
    if not isinstance(model, dict):
        raise TypeError(f'PacHotSwap: model must be a segmentor config dict, got {type(model).__name__}')
    if preset is None and targets is None:
        raise ValueError(f'PacHotSwap: give targets (Conv2d names or glob patterns) or a preset ({sorted(PRESETS)})')
    if preset is None and guidance is None:
        guidance = 'backbone:input'
    if data_preprocessor is not None:
        model = dict(model)
        model.setdefault('data_preprocessor', data_preprocessor)
    segmentor = MODELS.build(model)
    return pac_hot_swap(
        segmentor,
        list(targets) if targets is not None and not isinstance(targets, str) else targets,
        guidance=guidance,
        kernel_type=kernel_type,
        init_scale=init_scale,
        detach_guidance=detach_guidance,
        smooth_kernel_type=smooth_kernel_type,
        preset=preset,
    )
