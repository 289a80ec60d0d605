"""A USAD student exported by the USAD toolkit (`usad export --hf`), with the official release's
API: `forward(wav)` -> dict with `x`, `mel`, `hidden_states` (one per block), `ffn`, plus
`embedding` and `lengths`; `load_audio(path)`. The model code beside this file is generated from
the toolkit's own source; every module is imported here directly, because transformers copies
only a local snapshot's direct relative imports.
"""
import torch
from transformers import PreTrainedModel

from .configuration_usad import USADConfig
from .usad_compat import import_torchaudio
from .usad_frontend import SAMPLE_RATE
from .usad_model import UsadModel, truncated
from .usad_presets import UsadConfig
# {BUNDLED_IMPORTS}


class USADModel(PreTrainedModel):
    config_class = USADConfig
    main_input_name = "wav"

    def __init__(self, config: USADConfig):
        super().__init__(config)
        self.model = UsadModel(UsadConfig.from_dict(config.usad_toolkit["config"]))
        self.post_init()  # transformers' convention; from_pretrained then loads every weight

    def forward(self, wav: torch.Tensor, wav_lens: "torch.Tensor | None" = None, target_layer: "int | None" = None) -> dict:
        """wav [B, N] at 16 kHz (wav_lens: valid samples per item; padding is masked). target_layer
        (USAD 2.0's option): stop after that block; `x` is the final LayerNorm of its output."""
        model = self.model if target_layer is None else truncated(self.model, target_layer)
        out = model(wav, wav_lens)
        return {"x": out["x"], "mel": out["fbank"], "hidden_states": out["hidden_states"], "ffn": out["ffn"],
                "embedding": out["embedding"], "lengths": out["lengths"]}

    def load_audio(self, path: str) -> torch.Tensor:
        """A mono 16 kHz waveform [N] from an audio file (read with soundfile where installed)."""
        torchaudio = import_torchaudio()
        try:
            import soundfile
        except ImportError:
            wav, rate = torchaudio.load(str(path))
        else:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            wav = torch.from_numpy(data.T)
        wav = wav.mean(dim=0)
        return wav if rate == SAMPLE_RATE else torchaudio.functional.resample(wav, rate, SAMPLE_RATE)
