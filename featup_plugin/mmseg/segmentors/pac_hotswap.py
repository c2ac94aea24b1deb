"""mmseg registration of the PAC hot-swap: ``model = dict(type='PacHotSwap', model=<segmentor cfg>, targets=...)``.

Builds the segmentor, then replaces its ``targets`` Conv2d layers by PAC layers (see
``featup_plugin.layers.pac_hotswap``).
The swapped layers keep the Conv2d's state-dict keys, so ``load_from = <checkpoint of the original segmentor>``
loads the pretrained weights into them (the two new parameters per layer, ``guidance_scale`` and ``blend``, are
reported as missing and keep their initial values, with which the model computes exactly what the checkpoint
did). ``tools/model_converters/pac_hotswap.py`` wraps any segmentor config this way from the command line.
"""

from __future__ import annotations

from mmseg.registry import MODELS

from ...layers.pac_hotswap import pac_hot_swap


@MODELS.register_module(name='PacHotSwap')
def build_pac_hot_swap(
    model: dict,
    targets,
    guidance: str = 'backbone:input',
    kernel_type: str = 'gaussian',
    init_scale: float = 1.0,
    detach_guidance: bool = False,
    data_preprocessor=None,
):
    """``guidance`` defaults to the backbone's input: the normalised image of the current crop, also under slide
    inference (``'input'`` would be the whole batch tensor given to the segmentor). ``data_preprocessor`` (which
    mmengine's Runner adds from a config's top-level ``data_preprocessor``) goes to the segmentor unless it has
    its own."""
    if not isinstance(model, dict):
        raise TypeError(f'PacHotSwap: model must be a segmentor config dict, got {type(model).__name__}')
    if data_preprocessor is not None:
        model = dict(model)
        model.setdefault('data_preprocessor', data_preprocessor)
    segmentor = MODELS.build(model)
    return pac_hot_swap(
        segmentor,
        list(targets) if not isinstance(targets, str) else targets,
        guidance=guidance,
        kernel_type=kernel_type,
        init_scale=init_scale,
        detach_guidance=detach_guidance,
    )
