"""Reading checkpoints (torch only): safe loading, unwrapping, where JBU stacks sit, FeatUp's official files."""
from .featup import (FeatUpCheckpointError, UntrustedCheckpointError, convert_featup_state_dict,
                     load_featup_checkpoint, read_checkpoint)
from .io import load_mmengine_checkpoint
from .layout import (UpsamplerWeightsError, assign_upsampler_stacks, extract_upsampler_state_dict,
                     find_upsampler_stacks, trim_stages, unwrap_state_dict)

__all__ = ['load_mmengine_checkpoint', 'read_checkpoint', 'unwrap_state_dict', 'find_upsampler_stacks',
           'assign_upsampler_stacks', 'trim_stages', 'extract_upsampler_state_dict', 'UpsamplerWeightsError',
           'FeatUpCheckpointError', 'UntrustedCheckpointError', 'convert_featup_state_dict', 'load_featup_checkpoint']
