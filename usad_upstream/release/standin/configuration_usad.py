"""Stand-in of the release's configuration_usad.py (field names and Large's values from its
config.json; defaults are Small's, as RELEASED.md says the real file's are)."""
from transformers import PretrainedConfig


class USADConfig(PretrainedConfig):
    model_type = "usad"

    def __init__(
        self,
        encoder_dim: int = 384,
        num_layers: int = 12,
        num_attention_heads: int = 6,
        attention_type: str = "mhsa",
        feed_forward_expansion_factor: int = 4,
        half_step_residual: bool = True,
        transformer_style: bool = True,
        conv_expansion_factor: int = 2,
        conv_kernel_size: int = 31,
        attention_dropout_p: float = 0.1,
        conv_dropout_p: float = 0.1,
        feed_forward_dropout_p: float = 0.1,
        input_dropout_p: float = 0.0,
        input_dim: int = 128,
        use_framewise_subsample: bool = True,
        use_patchwise_subsample: bool = False,
        conv_subsample_channels: int = 64,
        conv_subsample_rate: int = 2,
        subsample_normalization: bool = True,
        conv_pos: bool = True,
        conv_pos_depth: int = 5,
        conv_pos_width: int = 95,
        conv_pos_groups: int = 16,
        **kwargs,
    ):
        self.encoder_dim = encoder_dim
        self.num_layers = num_layers
        self.num_attention_heads = num_attention_heads
        self.attention_type = attention_type
        self.feed_forward_expansion_factor = feed_forward_expansion_factor
        self.half_step_residual = half_step_residual
        self.transformer_style = transformer_style
        self.conv_expansion_factor = conv_expansion_factor
        self.conv_kernel_size = conv_kernel_size
        self.attention_dropout_p = attention_dropout_p
        self.conv_dropout_p = conv_dropout_p
        self.feed_forward_dropout_p = feed_forward_dropout_p
        self.input_dropout_p = input_dropout_p
        self.input_dim = input_dim
        self.use_framewise_subsample = use_framewise_subsample
        self.use_patchwise_subsample = use_patchwise_subsample
        self.conv_subsample_channels = conv_subsample_channels
        self.conv_subsample_rate = conv_subsample_rate
        self.subsample_normalization = subsample_normalization
        self.conv_pos = conv_pos
        self.conv_pos_depth = conv_pos_depth
        self.conv_pos_width = conv_pos_width
        self.conv_pos_groups = conv_pos_groups
        super().__init__(**kwargs)
