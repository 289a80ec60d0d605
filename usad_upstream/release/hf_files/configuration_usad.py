"""The transformers config of a USAD student exported by the USAD toolkit (`usad export --hf`)."""
from transformers import PretrainedConfig


class USADConfig(PretrainedConfig):
    """Holds the toolkit's own model config (`usad_toolkit["config"]`, a UsadConfig as a dict)."""

    model_type = "usad"

    def __init__(self, usad_toolkit: "dict | None" = None, **kwargs):
        self.usad_toolkit = usad_toolkit or {}
        super().__init__(**kwargs)
