"""USAD: one student encoder for speech, sound and music (arXiv 2506.18843)."""
from .checkpoint import load_model, save_checkpoint
from .model import UsadModel, build_model
from .presets import PRESETS, UsadConfig
from .release import load_encoder

__all__ = ["build_model", "load_model", "load_encoder", "save_checkpoint", "UsadModel", "UsadConfig", "PRESETS"]
__version__ = "0.1.0"
