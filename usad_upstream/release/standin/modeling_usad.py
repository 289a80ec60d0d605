"""Stand-in of the release's modeling_usad.py: tiny, everything under `self.model`."""
from transformers import PreTrainedModel

from .configuration_usad import USADConfig
from .usad_model import UsadModel


class USADModel(PreTrainedModel):
    config_class = USADConfig

    def __init__(self, config: USADConfig):
        super().__init__(config)
        self.model = UsadModel(config)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)
