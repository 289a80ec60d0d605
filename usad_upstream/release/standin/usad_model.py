"""Stand-in of the release's usad_model.py: fbank, 30 s windows, no padding mask."""
import torch
import torchaudio  # as the release does: fails on a CPU-only stack unless the caller fixed torchaudio first
from torch import nn

from .usad_modules import ConformerEncoder

MAX_MEL_LENGTH = 3000  # 30 s of fbank per encoder pass


def wav_to_fbank(wav: torch.Tensor) -> torch.Tensor:
    """[B, N] -> [B, F, 128]; the mean is taken over the whole row, padding included (no mask)."""
    mels = []
    for row in wav:
        row = row - row.mean()
        mel = torchaudio.compliance.kaldi.fbank(
            row.unsqueeze(0), htk_compat=True, sample_frequency=16000, use_energy=False,
            window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10,
        )
        mels.append((mel + 4.268) / (2 * 4.569))
    return torch.stack(mels)


class UsadModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.encoder = ConformerEncoder(config)

    def forward(self, wav: torch.Tensor, target_layer: int = None) -> dict:
        """wav [B, N] at 16 kHz -> {"x", "mel" [B, 2T, 128], "hidden_states" (one per block), "ffn"}."""
        mel = wav_to_fbank(wav)
        if mel.shape[1] % 2:  # GUESS: padded to an even length, so mel is [B, 2T, 128]
            mel = torch.nn.functional.pad(mel, (0, 0, 0, 1))
        outs = [self.encoder(chunk, target_layer) for chunk in mel.split(MAX_MEL_LENGTH, dim=1)]
        return {
            "x": torch.cat([o["x"] for o in outs], dim=1),
            "mel": mel,
            "hidden_states": [torch.cat(h, dim=1) for h in zip(*(o["hidden_states"] for o in outs))],
            "ffn": [torch.cat(f, dim=1) for f in zip(*(o["ffn"] for o in outs))],
        }
