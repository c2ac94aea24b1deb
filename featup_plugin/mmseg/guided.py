"""What every guided mmseg module shares (``FeatUpJBU``, ``SFTGuidedHead``): the data normalisation that
``GuidedEncoderDecoder`` hands over, the guidance recovered from the preprocessed batch, and the error for a
segmentor that gives no guidance."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from ..upsamplers.guidance import imagenet_guidance

__all__ = ['GuidedModuleMixin', 'missing_guidance_message']


def missing_guidance_message(who: str, part: str) -> str:
    return (
        f'{who} needs the input image as guidance, but the segmentor called the {part} without it. '
        'Use the guided segmentor by adding this line to your config:\n'
        "    model = dict(type='GuidedEncoderDecoder')\n"
        "(with custom_imports = dict(imports=['featup_plugin']) so that it is registered)."
    )


class GuidedModuleMixin:
    """``set_data_normalization`` (called by ``GuidedEncoderDecoder``) and ``guidance_from_inputs``: the
    preprocessed batch back to ImageNet-normalised RGB. Before ``set_data_normalization`` the batch is taken
    as ImageNet-normalised RGB already."""

    data_mean: Optional[Tuple[float, ...]] = None
    data_std: Optional[Tuple[float, ...]] = None
    data_bgr: bool = False

    def set_data_normalization(self, mean: Sequence[float], std: Sequence[float], bgr: bool) -> None:
        """How the image reaching the segmentor was normalised (``(x - mean) / std``, 0-255 scale)."""
        self.data_mean, self.data_std, self.data_bgr = tuple(map(float, mean)), tuple(map(float, std)), bool(bgr)

    def guidance_from_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised RGB from the preprocessed batch."""
        return imagenet_guidance(
            inputs, self.data_mean, self.data_std, 'BGR' if self.data_bgr else 'RGB', who=type(self).__name__
        )
