"""FeatUp's one-call API (torch + timm only): a featurizer and its official JBU upsampler in one module.

    from featup_plugin import hub
    upsampler = hub.load('dino16')              # FeatUp: torch.hub.load('mhamilton723/FeatUp', 'dino16')
    hr = upsampler(img)                         # = upsampler.upsampler(upsampler.model(img), img): x16
    hr = upsampler(img, output_size=img.shape[-2:])   # any size up to x16 of the features, non-square too

``img``: ImageNet-normalised RGB ``[B, 3, H, W]`` (what FeatUp feeds its backbones and guidance). The returned
:class:`UpsampledBackbone` has FeatUp's shape: ``.model`` (the featurizer, then ``ChannelNorm(dim)`` when
``use_norm``, as an ``nn.Sequential``), ``.upsampler`` (``JBUStack(dim)``), ``.dim``; it is in eval mode.

Weights: ``pretrained=True`` downloads FeatUp's published ``{name}_jbu_stack_cocostuff.ckpt`` (the URLs of
FeatUp's ``hubconf.py``) into torch.hub's cache, one folder per flavour, and the backbone's weights through timm /
torch.hub; an official Lightning file given as ``upsampler_weights=PATH`` is converted on load
(:func:`featup_plugin.checkpoint.convert_featup_state_dict`), as are our training checkpoints and bare stacks.
Details and the facts behind each featurizer: docs/hub.md.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .checkpoint.featup import DROPPED_PREFIXES, convert_featup_state_dict, guess_backbone
from .checkpoint.io import read_checkpoint
from .checkpoint.layout import UpsamplerWeightsError, find_upsampler_stacks, load_stacks, unwrap_state_dict
from .featurizers.featup import FEATUP_FEATURIZERS, FeatUpFeaturizer, WeightsDownloadError, featurizer_spec
from .upsamplers import ChannelNorm, JBUStack

__all__ = [
    'FEATUP_CHECKPOINT_ROOT',
    'UpsampledBackbone',
    'WeightsDownloadError',
    'cached_checkpoint_path',
    'checkpoint_url',
    'download_checkpoint',
    'list_models',
    'load',
    'upsampler_from_checkpoint',
]

#: Where FeatUp publishes its JBU checkpoints (hubconf.py: ``pretrained/{no_norm/}{name}_jbu_stack_cocostuff.ckpt``).
FEATUP_CHECKPOINT_ROOT = 'https://marhamilresearch4.blob.core.windows.net/feature-upsampling-public/pretrained/'

_RANDOM = 'random init (pretrained=False)'


def list_models() -> List[str]:
    """The names :func:`load` accepts: FeatUp's six official upsamplers."""
    return list(FEATUP_FEATURIZERS)


def _flavour(name: str, use_norm: Optional[bool]) -> bool:
    """``use_norm`` resolved: None -> FeatUp's default (True; False for maskclip, whose only file is no_norm)."""
    spec = featurizer_spec(name)
    if use_norm is None:
        return spec.name != 'maskclip'
    if not isinstance(use_norm, bool):
        raise TypeError(f'use_norm must be True, False or None, got {use_norm!r}')
    return use_norm


def checkpoint_url(name: str, use_norm: bool = True) -> str:
    """The URL of FeatUp's ``{name}_jbu_stack_cocostuff.ckpt`` (``no_norm/`` for ``use_norm=False``)."""
    spec = featurizer_spec(name)
    if use_norm and spec.name == 'maskclip':
        raise ValueError(
            'FeatUp publishes the maskclip upsampler only without the ChannelNorm (no_norm/): use use_norm=False '
            '(FeatUp\'s hubconf asserts "MaskCLIP only supports unnormed model")'
        )
    return f'{FEATUP_CHECKPOINT_ROOT}{"" if use_norm else "no_norm/"}{spec.name}_jbu_stack_cocostuff.ckpt'


def cached_checkpoint_path(name: str, use_norm: bool = True) -> str:
    """Where :func:`download_checkpoint` keeps the file: ``<torch.hub.get_dir()>/checkpoints/featup/{norm,no_norm}/``
    (one folder per flavour: both flavours have the same file name)."""
    spec = featurizer_spec(name)
    flavour = 'norm' if use_norm else 'no_norm'
    return os.path.join(torch.hub.get_dir(), 'checkpoints', 'featup', flavour, f'{spec.name}_jbu_stack_cocostuff.ckpt')


def download_checkpoint(name: str, use_norm: bool = True, progress: bool = True) -> str:
    """The local path of FeatUp's checkpoint for ``name``, downloaded with ``torch.hub.download_url_to_file`` on
    first use. Raises :class:`WeightsDownloadError` (naming the URL and the ``upsampler_weights=PATH``
    alternative) when the download fails."""
    url = checkpoint_url(name, use_norm)
    dst = cached_checkpoint_path(name, use_norm)
    if os.path.isfile(dst):
        return dst
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, dst, progress=progress)  # writes a .partial file, then renames it
    except Exception as err:  # noqa: BLE001 - urllib / ssl / socket errors differ by platform
        raise WeightsDownloadError(
            f"could not download FeatUp's {featurizer_spec(name).name!r} upsampler "
            f'({"with" if use_norm else "without"} ChannelNorm) from {url}: {type(err).__name__}: {err}. '
            f'Offline? Download the file where you can and pass upsampler_weights=PATH (or put it at {dst}); '
            'pretrained=False builds random weights.'
        ) from err
    if not os.path.isfile(dst):
        raise WeightsDownloadError(f'downloading {url} did not produce {dst}')
    return dst


def _is_featup_layout(state: Mapping[str, Any]) -> bool:
    """FeatUp's Lightning module / hub model: ``upsampler.*`` beside only ``downsampler``, ``scale_net``, ``model``."""
    heads = {str(k).split('.', 1)[0] + '.' for k in state}
    return 'upsampler.' in heads and heads <= {'upsampler.', *DROPPED_PREFIXES}


def _stack_from(state: Mapping[str, Any], where: str) -> Tuple[Dict[str, torch.Tensor], Optional[dict], str]:
    """``(JBUStack state dict, FeatUp's ChannelNorm tensors or None, what it was)`` of a loaded checkpoint."""
    state = unwrap_state_dict(state)
    if _is_featup_layout(state):
        sd, info = convert_featup_state_dict(state)  # validates FeatUp's layout, drops the training-only parts
        return sd, info['channel_norm'], 'FeatUp checkpoint'
    stacks = find_upsampler_stacks(state, where=where)
    if len(stacks) != 1:
        found = f'JBU stacks under {[r + "." for r in stacks]}' if stacks else 'no JBU stack'
        raise UpsamplerWeightsError(
            f'{where} holds {found}; featup_plugin.hub.load needs one (a FeatUp checkpoint, an upsampler-training '
            'checkpoint, a bare JBUStack state dict, or a model with a single upsampler)'
        )
    root, sd = next(iter(stacks.items()))
    return dict(sd), None, f'JBU stack under {root + "." if root else "the top level"}'


def _build_stack(sd: Mapping[str, torch.Tensor], dim: int, name: str, where: str) -> JBUStack:
    """A ``JBUStack`` shaped as the weights (stages, radius, key_dim), after checking their width is ``dim``."""
    w = sd.get('fixup_proj.1.weight')
    if w is None or 'up1.range_proj.0.weight' not in sd or 'up1.fixup_proj.3.weight' not in sd:
        raise UpsamplerWeightsError(f'{where}: the stack lacks fixup_proj.1.weight / up1.* keys: {sorted(sd)[:6]}')
    if int(w.shape[0]) != dim:
        official = guess_backbone(int(w.shape[0]))
        hint = f' (the official checkpoints of that width: {official})' if official else ''
        raise UpsamplerWeightsError(
            f'{where} holds an upsampler for {int(w.shape[0])}-d features{hint}, but {name!r} gives {dim}-d '
            'features: an upsampler only fits the featurizer it was trained on'
        )
    stages = sum(1 for k in sd if k.startswith('up') and k.endswith('.range_temp'))
    taps = int(sd['up1.fixup_proj.3.weight'].shape[0])
    radius = (int(round(taps**0.5)) - 1) // 2
    key_dim = int(sd['up1.range_proj.0.weight'].shape[0])
    return JBUStack(dim, num_stages=stages, radius=radius, key_dim=key_dim)


def upsampler_from_checkpoint(
    source: Union[str, Mapping[str, Any]],
    dim: int,
    name: str = 'the featurizer',
    trust: bool = False,
    where: Optional[str] = None,
) -> Tuple[JBUStack, Optional[Dict[str, torch.Tensor]], str]:
    """``(JBUStack with the weights, FeatUp's ChannelNorm tensors or None, description)`` from a file or loaded
    checkpoint: FeatUp's Lightning checkpoint (converted), an upsampler-training checkpoint, a bare ``JBUStack``
    state dict or a model holding one stack. The stack is built as the weights are (stages, radius, key_dim);
    their width must be ``dim`` (``name`` is the featurizer, ``where`` the source, for messages). ``trust``: see
    :func:`load`."""
    if isinstance(source, Mapping):
        state, where = source, where or 'the given state dict'
    else:
        path = os.path.expanduser(os.fspath(source))
        state, where = read_checkpoint(path, trust=trust, mmap=True), where or path
    stack_sd, channel_norm, what = _stack_from(state, where=where)
    stack = _build_stack(stack_sd, dim, name, where)
    load_stacks({'0': stack}, stack_sd, who=f'upsampler of {name!r}', where=where)
    return stack, channel_norm, what


class UpsampledBackbone(nn.Module):
    """A FeatUp featurizer and its JBU upsampler (FeatUp's ``hubconf.UpsampledBackbone``).

    ``forward(image, output_size=None, scale_factor=None)`` = ``upsampler(model(image), image, ...)``: by default
    x16 of the features (FeatUp's only output), else ``output_size=(H, W)`` (or ``'guidance'``: the image's size)
    or ``scale_factor``, anywhere up to x16 (x2 ** ``upsampler.num_stages``), non-square too. ``image``:
    ImageNet-normalised RGB ``[B, 3, H, W]``.

    Attributes: ``name``, ``dim``, ``stride`` (of the low-resolution features), ``use_norm``, ``model``
    (``featurizer`` then ``ChannelNorm(dim)`` in an ``nn.Sequential`` when ``use_norm``, else the featurizer),
    ``featurizer`` (a :class:`~featup_plugin.featurizers.FeatUpFeaturizer`), ``upsampler`` (``JBUStack``),
    ``weights`` (``{'backbone': source, 'upsampler': source}``, also in the repr).
    """

    def __init__(
        self,
        featurizer: FeatUpFeaturizer,
        upsampler: JBUStack,
        use_norm: bool,
        weights: Optional[Dict[str, str]] = None,
    ):
        super().__init__()
        if featurizer.use_norm:
            raise ValueError('UpsampledBackbone adds the ChannelNorm itself: build the featurizer with use_norm=False')
        if upsampler.feat_dim != featurizer.dim:
            raise ValueError(f'upsampler width {upsampler.feat_dim} != featurizer width {featurizer.dim}')
        self.name, self.dim, self.stride, self.use_norm = featurizer.name, featurizer.dim, featurizer.stride, use_norm
        self.model = nn.Sequential(featurizer, ChannelNorm(self.dim)) if use_norm else featurizer
        self.upsampler = upsampler
        self.weights = dict(weights or {'backbone': featurizer.weights_source, 'upsampler': _RANDOM})

    @property
    def featurizer(self) -> FeatUpFeaturizer:
        return self.model[0] if self.use_norm else self.model

    def forward(
        self,
        image: torch.Tensor,
        output_size: Union[None, int, str, Sequence[int]] = None,
        scale_factor: Union[None, float, Sequence[float]] = None,
    ) -> torch.Tensor:
        return self.upsampler(self.model(image), image, output_size=output_size, scale_factor=scale_factor)

    def extra_repr(self) -> str:
        return (
            f'name={self.name!r}, dim={self.dim}, stride={self.stride}, use_norm={self.use_norm},\n'
            f'backbone weights: {self.weights.get("backbone")},\nupsampler weights: {self.weights.get("upsampler")}'
        )


def load(
    name: str,
    pretrained: bool = True,
    use_norm: Optional[bool] = None,
    upsampler_weights: Optional[Union[str, Mapping[str, torch.Tensor]]] = None,
    backbone_weights: Optional[str] = None,
    device: Union[None, str, torch.device] = None,
    trust: bool = False,
    progress: bool = True,
) -> UpsampledBackbone:
    """FeatUp's featurizer ``name`` with its JBU upsampler, as FeatUp's ``torch.hub.load(..., name)``.

    Args:
        name: one of :func:`list_models`: ``'vit'``, ``'dino16'``, ``'dinov2'``, ``'clip'``, ``'maskclip'``,
            ``'resnet50'``.
        pretrained: download what is not given: FeatUp's upsampler checkpoint (see :func:`checkpoint_url`, cached
            by :func:`download_checkpoint`) and the backbone's weights (timm's hub; ResNet-50: FeatUp's torchvision
            file). ``False``: random init for what is not given, said in the repr.
        use_norm: FeatUp's ``ChannelNorm`` on the features and the checkpoint flavour trained with it; None (default)
            is FeatUp's default: True, but False for ``'maskclip'`` (FeatUp has no normed maskclip upsampler).
        upsampler_weights: a local file (or state dict) instead of the download: FeatUp's Lightning checkpoint
            (converted on load; its ChannelNorm tensors go to ``model[1]``), one written by our upsampler training,
            a converted / bare ``JBUStack`` state dict, or a model's checkpoint holding one stack. Its width must
            be the featurizer's; its stages, radius and key_dim are read from it.
        backbone_weights: a local backbone checkpoint instead of the download (formats:
            :class:`~featup_plugin.featurizers.FeatUpFeaturizer`; FeatUp's own Lightning files hold their frozen
            backbone under ``model.0.``, so the upsampler's file may be given here too).
        device: where to put the model (default: CPU).
        trust: read local files that hold pickled Python objects (Lightning's hyper-parameters) with a full
            unpickle (trusted files only). The files downloaded from FeatUp's URL are read so, as FeatUp's own
            ``torch.hub`` loading does.
        progress: show download progress.

    Raises:
        ValueError: unknown name (the message lists the names), ``use_norm=True`` for maskclip's download.
        WeightsDownloadError: a download failed (the message names the URL and the local-file alternative).
        UpsamplerWeightsError / FeatUpCheckpointError: the upsampler file does not fit (width, layout).
    """
    spec = featurizer_spec(name)
    if not isinstance(pretrained, bool):
        raise TypeError(f'pretrained must be True or False, got {pretrained!r} (local files: upsampler_weights=PATH)')
    use_norm = _flavour(spec.name, use_norm)
    # the upsampler file first: a failing download (or a bad file) stops before building the backbone
    sources: Dict[str, str] = {}
    source: Any = None
    if upsampler_weights is not None:
        source = upsampler_weights
        sources['upsampler'] = (
            'the given state dict' if isinstance(source, Mapping) else os.path.expanduser(os.fspath(source))
        )
        source_trust = trust
    elif pretrained:
        source = download_checkpoint(spec.name, use_norm, progress=progress)
        sources['upsampler'] = f'{checkpoint_url(spec.name, use_norm)} (cached at {source})'
        source_trust = True  # FeatUp's published file, from FeatUp's URL (FeatUp's torch.hub loading unpickles it)
    else:
        sources['upsampler'] = _RANDOM
    upsampler = channel_norm = None
    if source is not None:  # checked against FeatUp's width before the backbone is built (or downloaded)
        where = sources['upsampler']
        if not isinstance(source, Mapping):
            source = read_checkpoint(os.path.expanduser(os.fspath(source)), trust=source_trust, mmap=True)
        upsampler, channel_norm, what = upsampler_from_checkpoint(source, spec.dim, spec.name, where=where)
        sources['upsampler'] += f' [{what}]'

    featurizer = FeatUpFeaturizer(spec.name, pretrained=pretrained, weights=backbone_weights, trust=trust)
    sources['backbone'] = featurizer.weights_source
    if upsampler is None:
        upsampler = JBUStack(featurizer.dim)
    model = UpsampledBackbone(featurizer, upsampler, use_norm, weights=sources)
    if use_norm and channel_norm is not None:
        model.model[1].load_state_dict(channel_norm)
    model.eval()
    return model.to(device) if device is not None else model
