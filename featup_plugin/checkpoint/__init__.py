"""Reading checkpoints (torch only): one reader, unwrapping, where JBU stacks sit and loading them, FeatUp's
official files."""

from .featup import FeatUpCheckpointError, convert_featup_state_dict, load_featup_checkpoint
from .io import (
    CheckpointError,
    NotACheckpointError,
    UntrustedCheckpointError,
    load_mmengine_checkpoint,
    read_checkpoint,
    read_state_dict,
)
from .layout import (
    UpsamplerMismatchError,
    UpsamplerWeightsError,
    assign_upsampler_stacks,
    extract_upsampler_state_dict,
    find_upsampler_stacks,
    load_stacks,
    trim_stages,
    unwrap_state_dict,
)

__all__ = [
    'read_checkpoint',
    'read_state_dict',
    'load_mmengine_checkpoint',
    'CheckpointError',
    'NotACheckpointError',
    'UntrustedCheckpointError',
    'unwrap_state_dict',
    'find_upsampler_stacks',
    'assign_upsampler_stacks',
    'trim_stages',
    'load_stacks',
    'extract_upsampler_state_dict',
    'UpsamplerWeightsError',
    'UpsamplerMismatchError',
    'FeatUpCheckpointError',
    'convert_featup_state_dict',
    'load_featup_checkpoint',
]
