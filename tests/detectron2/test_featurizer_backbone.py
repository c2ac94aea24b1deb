"""build_featup_featurizer_backbone: FeatUp's featurizers behind detectron2's input convention, wrapped by
FeatUpBackbone."""

import pytest
import torch

pytest.importorskip('detectron2', reason='detectron2 is not installed (bash tools/install_detectron2.sh installs it)')
pytest.importorskip('timm', reason='timm is not installed')

from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_backbone  # noqa: E402

import featup_plugin.detectron2 as fd2  # noqa: E402
from featup_plugin.featurizers import FeatUpFeaturizer  # noqa: E402
from tests.helpers import one_thread, perturb  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures('one_thread')


def cfg_for(name, *opts):
    cfg = fd2.add_featup_config(get_cfg())
    cfg.merge_from_list(
        ['MODEL.BACKBONE.NAME', 'FeatUpBackbone', 'MODEL.FEATUP.BASE_BACKBONE', 'build_featup_featurizer_backbone']
        + ['MODEL.FEATUP.FEATURIZER.NAME', name, 'MODEL.DEVICE', 'cpu']
        + list(opts)
    )
    return cfg


def test_featup_backbone_over_a_featup_featurizer(tmp_path):
    src = perturb(FeatUpFeaturizer('dino16'), seed=2, scale=0.02)
    torch.save(src.state_dict(), tmp_path / 'dino16.pth')
    cfg = cfg_for('dino16', 'MODEL.FEATUP.FEATURIZER.WEIGHTS', str(tmp_path / 'dino16.pth'))
    model = build_backbone(cfg)  # BGR input, detectron2's default PIXEL_MEAN / STD
    assert isinstance(model, fd2.FeatUpBackbone) and isinstance(model.base, fd2.FeaturizerBackbone)
    assert model.base.size_divisibility == 16
    shape = model.output_shape()['dino16']
    assert (shape.channels, shape.stride) == (384, 4)
    rgb = torch.randint(0, 256, (1, 3, 64, 96)).float()
    bgr_input = (rgb.flip(1) - torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        cfg.MODEL.PIXEL_STD
    ).view(1, 3, 1, 1)
    imagenet = (rgb / 255 - torch.tensor(fd2.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(fd2.IMAGENET_STD).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        base = model.base(bgr_input)['dino16']
        torch.testing.assert_close(base, src(imagenet), rtol=1e-4, atol=1e-4)  # the features FeatUp computes
        assert model(bgr_input)['dino16'].shape == (1, 384, 16, 24)


def test_featurizer_backbone_config_errors():
    cfg = cfg_for('')
    with pytest.raises(ValueError, match='MODEL.FEATUP.FEATURIZER.NAME'):
        build_backbone(cfg)
    with pytest.raises(ValueError, match="unknown FeatUp featurizer 'dino'"):
        build_backbone(cfg_for('dino'))
    b = fd2.FeaturizerBackbone('dinov2', input_format='RGB', out_name='res5', model_kwargs=dict(depth=1))
    assert b.output_shape()['res5'].stride == 14 and b(torch.zeros(1, 3, 28, 42))['res5'].shape == (1, 384, 2, 3)
