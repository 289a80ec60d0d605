"""Stand-in of the release's usad_modules.py: openspeech / sooftware "conformer" modules as USAD
changed them (transformer_style blocks, data2vec conv positions, framewise subsampling).

Names follow that code base (`query_proj.linear`, `u_bias`, `sequential.N.module`, ...); the
exact key names, the residual scale, the position term and the block layout of the real file
are GUESSES (RELEASED.md: "none of this is certain").
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Module):
    """openspeech's wrapper: the weights live under `.linear`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)

    def forward(self, x):
        return self.linear(x)


class PositionalEncoding(nn.Module):
    """Sinusoids of ABSOLUTE positions 0..T-1 (sooftware's PositionalEncoding)."""

    def __init__(self, d_model: int, max_len: int = 5000):
        super().__init__()
        pe = torch.zeros(max_len, d_model)
        position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2).float() * -(math.log(10000.0) / d_model))
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(0), persistent=False)  # GUESS: not saved in the weights

    def forward(self, length: int):
        return self.pe[:, :length]


class RelativeMultiHeadAttention(nn.Module):
    """Transformer-XL style scores with sooftware's shift and its 1/sqrt(d_model) scale; no mask."""

    def __init__(self, d_model: int, num_heads: int, dropout_p: float):
        super().__init__()
        self.d_model = d_model
        self.d_head = d_model // num_heads
        self.num_heads = num_heads
        self.sqrt_dim = math.sqrt(d_model)  # GUESS: sooftware's scale (newer openspeech: sqrt(d_head))
        self.query_proj = Linear(d_model, d_model)
        self.key_proj = Linear(d_model, d_model)
        self.value_proj = Linear(d_model, d_model)
        self.pos_proj = Linear(d_model, d_model, bias=False)
        self.dropout = nn.Dropout(p=dropout_p)
        self.u_bias = nn.Parameter(torch.empty(num_heads, self.d_head))
        self.v_bias = nn.Parameter(torch.empty(num_heads, self.d_head))
        nn.init.xavier_uniform_(self.u_bias)
        nn.init.xavier_uniform_(self.v_bias)
        self.out_proj = Linear(d_model, d_model)

    def forward(self, query, key, value, pos_embedding):
        batch_size = value.size(0)
        query = self.query_proj(query).view(batch_size, -1, self.num_heads, self.d_head)
        key = self.key_proj(key).view(batch_size, -1, self.num_heads, self.d_head).permute(0, 2, 1, 3)
        value = self.value_proj(value).view(batch_size, -1, self.num_heads, self.d_head).permute(0, 2, 1, 3)
        pos_embedding = self.pos_proj(pos_embedding).view(batch_size, -1, self.num_heads, self.d_head)
        content_score = torch.matmul((query + self.u_bias).transpose(1, 2), key.transpose(2, 3))
        pos_score = torch.matmul((query + self.v_bias).transpose(1, 2), pos_embedding.permute(0, 2, 3, 1))
        pos_score = self._relative_shift(pos_score)
        attn = self.dropout(F.softmax((content_score + pos_score) / self.sqrt_dim, -1))
        context = torch.matmul(attn, value).transpose(1, 2).contiguous().view(batch_size, -1, self.d_model)
        return self.out_proj(context)

    @staticmethod
    def _relative_shift(pos_score):
        batch_size, num_heads, seq_length1, seq_length2 = pos_score.size()
        zeros = pos_score.new_zeros(batch_size, num_heads, seq_length1, 1)
        padded_pos_score = torch.cat([zeros, pos_score], dim=-1)
        padded_pos_score = padded_pos_score.view(batch_size, num_heads, seq_length2 + 1, seq_length1)
        return padded_pos_score[:, :, 1:].view_as(pos_score)


class MultiHeadedSelfAttentionModule(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout_p: float):
        super().__init__()
        self.positional_encoding = PositionalEncoding(d_model)
        self.layer_norm = nn.LayerNorm(d_model)
        self.attention = RelativeMultiHeadAttention(d_model, num_heads, dropout_p)
        self.dropout = nn.Dropout(p=dropout_p)

    def forward(self, inputs):
        batch_size, seq_length, _ = inputs.size()
        pos_embedding = self.positional_encoding(seq_length).repeat(batch_size, 1, 1)
        inputs = self.layer_norm(inputs)
        return self.dropout(self.attention(inputs, inputs, inputs, pos_embedding))


class FeedForwardModule(nn.Module):
    def __init__(self, encoder_dim: int, expansion_factor: int, dropout_p: float):
        super().__init__()
        self.sequential = nn.Sequential(
            nn.LayerNorm(encoder_dim),
            Linear(encoder_dim, encoder_dim * expansion_factor),
            nn.GELU(),  # GUESS: openspeech's Conformer uses Swish; USAD's transformer_style is not known
            nn.Dropout(p=dropout_p),
            Linear(encoder_dim * expansion_factor, encoder_dim),
            nn.Dropout(p=dropout_p),
        )

    def forward(self, inputs):
        return self.sequential(inputs)


class ResidualConnectionModule(nn.Module):
    """outputs = module(inputs) * module_factor + inputs * input_factor."""

    def __init__(self, module: nn.Module, module_factor: float = 1.0, input_factor: float = 1.0):
        super().__init__()
        self.module = module
        self.module_factor = module_factor
        self.input_factor = input_factor

    def forward(self, inputs):
        return self.module(inputs) * self.module_factor + inputs * self.input_factor


class ConformerBlock(nn.Module):
    """transformer_style: attention then one FFN, each pre-LN with a residual; GUESS: the FFN keeps
    the macaron half-step factor (half_step_residual) and no per-block final LayerNorm."""

    def __init__(self, config):
        super().__init__()
        factor = 0.5 if config.half_step_residual else 1.0
        self.sequential = nn.Sequential(
            ResidualConnectionModule(
                MultiHeadedSelfAttentionModule(config.encoder_dim, config.num_attention_heads, config.attention_dropout_p)
            ),
            ResidualConnectionModule(
                FeedForwardModule(config.encoder_dim, config.feed_forward_expansion_factor, config.feed_forward_dropout_p),
                module_factor=factor,
            ),
        )

    def forward(self, inputs):
        """-> (block output, FFN output before the residual)."""
        x = self.sequential[0](inputs)
        residual = self.sequential[1]
        ffn = residual.module(x)
        return ffn * residual.module_factor + x * residual.input_factor, ffn


class Conv2dSubsampling(nn.Module):
    """Framewise: stride 2 in frequency twice; time stride conv_subsample_rate in total (GUESS: 2 on
    the first conv, the rest on the second, time padding 1)."""

    def __init__(self, channels: int, rate: int):
        super().__init__()
        self.sequential = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=(2, 2), padding=(1, 0)),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=(rate // 2, 2), padding=(1, 0)),
            nn.ReLU(),
        )

    def forward(self, mel):
        x = self.sequential(mel.unsqueeze(1))  # [B, C, T, F']
        b, c, t, f = x.shape
        return x.permute(0, 2, 1, 3).reshape(b, t, c * f)


class ConvPositionalEncoding(nn.Module):
    """data2vec 2.0: depth x [Conv1d(k = width // depth, groups), LayerNorm without affine, GELU]."""

    def __init__(self, dim: int, depth: int, width: int, groups: int):
        super().__init__()
        kernel = width // depth
        self.layers = nn.Sequential(*[
            nn.Sequential(nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups), _ChannelLayerNorm(dim), nn.GELU())
            for _ in range(depth)
        ])

    def forward(self, x):
        return x + self.layers(x.transpose(1, 2)).transpose(1, 2)


class _ChannelLayerNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x):  # [B, D, T]
        return F.layer_norm(x.transpose(1, 2), (self.dim,)).transpose(1, 2)


class ConformerEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        freq = ((config.input_dim - 3) // 2 + 1 - 3) // 2 + 1
        self.conv_subsample = Conv2dSubsampling(config.conv_subsample_channels, config.conv_subsample_rate)
        self.input_projection = nn.Sequential(
            Linear(config.conv_subsample_channels * freq, config.encoder_dim), nn.Dropout(p=config.input_dropout_p)
        )
        self.subsample_norm = nn.LayerNorm(config.encoder_dim)
        self.conv_pos = ConvPositionalEncoding(
            config.encoder_dim, config.conv_pos_depth, config.conv_pos_width, config.conv_pos_groups
        )
        self.layers = nn.ModuleList([ConformerBlock(config) for _ in range(config.num_layers)])
        self.layer_norm = nn.LayerNorm(config.encoder_dim)  # GUESS: where the final output's norm lives

    def forward(self, mel, target_layer=None):
        x = self.conv_pos(self.subsample_norm(self.input_projection(self.conv_subsample(mel))))
        hidden_states, ffn = [], []
        for layer in self.layers[:target_layer]:
            x, f = layer(x)
            hidden_states.append(x)
            ffn.append(f)
        return {"x": self.layer_norm(x), "hidden_states": hidden_states, "ffn": ffn}
