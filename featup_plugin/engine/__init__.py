"""Small helpers for the command-line tools (framework-free except where they say so)."""
from .checkpoint import load_mmengine_checkpoint, use_mmengine_checkpoint_loader
from .launch import use_gloo_without_cuda

__all__ = ['load_mmengine_checkpoint', 'use_gloo_without_cuda', 'use_mmengine_checkpoint_loader']
