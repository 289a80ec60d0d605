"""The one compatibility layer between this modern stack and torchaudio / s3prl / heareval / muq.

Every patch checks first and only adds what is missing, so it is a no-op on stacks that work.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import os
import pathlib
import sys
from types import ModuleType
from typing import Callable, Iterator

import torch


@contextlib.contextmanager
def _hide_native_libs(lib_dir: pathlib.Path) -> Iterator[None]:
    """Make torchaudio's loader find no native library, so it imports pure-Python only."""
    original_glob = pathlib.Path.glob

    def glob(self: pathlib.Path, pattern: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self == lib_dir:
            return iter(())
        return original_glob(self, pattern, *args, **kwargs)

    pathlib.Path.glob = glob  # type: ignore[method-assign]
    try:
        yield
    finally:
        pathlib.Path.glob = original_glob  # type: ignore[method-assign]


def import_torchaudio() -> ModuleType:
    """Import torchaudio; if its native extension cannot load beside this torch (PyPI's CUDA
    builds next to a CPU torch), import it without the extension. fbank, MelSpectrogram,
    resample and lfilter are pure Python and keep working.

    The import runs outside inference mode even when called inside it: torchaudio's module-level
    tensor constants (kaldi's EPSILON) would otherwise become inference tensors and break every
    later fbank under autograd in the process.
    """
    if "torchaudio" in sys.modules:
        return sys.modules["torchaudio"]
    with torch.inference_mode(False):
        try:
            import torchaudio

            return torchaudio
        except OSError:
            for name in [m for m in sys.modules if m == "torchaudio" or m.startswith("torchaudio.")]:
                del sys.modules[name]
        spec = importlib.util.find_spec("torchaudio")
        assert spec is not None and spec.submodule_search_locations
        lib_dir = pathlib.Path(list(spec.submodule_search_locations)[0]) / "lib"
        with _hide_native_libs(lib_dir):
            import torchaudio
        return torchaudio


# --- muq (the MuQ teacher) -----------------------------------------------------------------------


def import_muq() -> ModuleType:
    """muq's SSL model subpackage `muq.muq` (MuQ, MuQConfig), without running `muq/__init__.py`.

    muq 0.1.0's package init also imports MuQ-MuLan, whose text tower imports x_clip, which pulls
    torchvision; PyPI's torchvision does not import beside this CPU torch wheel, and the SSL model
    needs none of them (it needs einops, easydict, torchaudio, transformers, huggingface_hub). So
    the package module is made from its spec without executing its init, `muq.muq` is imported
    under it, and MuQ / MuQConfig are set on it so `from muq import MuQ` works as documented. A
    `muq` already imported (fully, where x_clip works) is used as it is.
    """
    import_torchaudio()  # muq's feature module imports torchaudio at top level
    added = "muq" not in sys.modules
    if added:
        spec = importlib.util.find_spec("muq")
        if spec is None:
            raise ImportError("the MuQ teacher needs the muq package: `make setup`, or pip install --no-deps muq==0.1.0 && pip install einops easydict")
        sys.modules["muq"] = importlib.util.module_from_spec(spec)
    try:
        ssl = importlib.import_module("muq.muq")
    except ImportError:
        if added:
            del sys.modules["muq"]
        raise
    package = sys.modules["muq"]
    for name in ("MuQ", "MuQConfig"):
        if not hasattr(package, name):
            setattr(package, name, getattr(ssl, name))
    return ssl


# --- heareval / hear-validator -------------------------------------------------------------------


def _tensorflow_stand_in() -> ModuleType:
    """A `tensorflow` module holding only what heareval and hear-validator touch for torch models.

    Both import TensorFlow at top level; for a torch model they only ask `isinstance(model,
    tf.Module)` and, when torch sees a GPU, `tf.test.is_gpu_available()`. einops (in the MuQ
    teacher) sees `tensorflow` in sys.modules and asks `isinstance(x, (tf.Tensor, tf.Variable))`.
    Anything else raises an AttributeError saying TensorFlow is absent, so a real TF model fails
    loudly, not silently.
    """
    import importlib.machinery

    import torch

    tf = ModuleType("tensorflow", "Stand-in installed by usad_upstream.compat.patch_heareval: TensorFlow is absent.")
    tf.__spec__ = importlib.machinery.ModuleSpec("tensorflow", None, origin="usad_upstream.compat stand-in")
    tf.__version__ = "0+usad.stand.in"

    class Module:
        """No object is ever a tf.Module without TensorFlow, so heareval takes its torch path."""

    class Tensor:
        """No object is ever a tf.Tensor (or tf.Variable) without TensorFlow."""

    def is_gpu_available(cuda_only: bool = False, min_cuda_compute_capability: object = None) -> bool:
        # heareval refuses to run when torch sees a GPU that TF does not; without TF there is no
        # TF model to place, so report what torch sees.
        return torch.cuda.is_available()

    def missing(name: str) -> object:
        raise AttributeError(
            f"tensorflow.{name}: TensorFlow is not installed (usad_upstream.compat put a stand-in in its "
            "place for PyTorch models); install tensorflow to evaluate TensorFlow models"
        )

    test = ModuleType("tensorflow.test")
    test.is_gpu_available = is_gpu_available  # type: ignore[attr-defined]
    tf.Module = Module  # type: ignore[attr-defined]
    tf.Tensor = tf.Variable = Tensor  # type: ignore[attr-defined]
    tf.test = test  # type: ignore[attr-defined]
    tf.__getattr__ = missing  # type: ignore[attr-defined]
    return tf


def _restore_fit_loop_current_epoch() -> None:
    """heareval's predictions runner sets `trainer.fit_loop.current_epoch = best_epoch` before
    testing so event postprocessing uses that epoch's choice; pytorch-lightning >= 1.6 removed
    that property (setting it makes a dead attribute, then a KeyError). Restore it on FitLoop,
    backed by the counter `trainer.current_epoch` reads."""
    from pytorch_lightning.loops.fit_loop import FitLoop

    existing = FitLoop.__dict__.get("current_epoch")
    if isinstance(existing, property) and existing.fset is not None:
        return

    def get_epoch(self: FitLoop) -> int:
        return self.epoch_progress.current.completed

    def set_epoch(self: FitLoop, value: int) -> None:
        self.epoch_progress.current.completed = value

    FitLoop.current_epoch = property(get_epoch, set_epoch, doc="The current epoch (settable, as in PL < 1.6).")


def _decode_gpu_name() -> None:
    """heareval.gpu_max_mem.device_name() calls .decode() on NVML's name, which pynvml >= 11.5
    returns as str: on GPU machines both runners would crash after finishing their work."""
    import heareval.gpu_max_mem as gpu_max_mem

    if not hasattr(gpu_max_mem, "nvmlDeviceGetName") or getattr(gpu_max_mem.device_name, "_usad_patched", False):
        return

    def device_name(device_index: int = 0) -> str:
        name = gpu_max_mem.nvmlDeviceGetName(gpu_max_mem.nvmlDeviceGetHandleByIndex(device_index))
        return name.decode("utf-8") if isinstance(name, bytes) else str(name)

    device_name._usad_patched = True  # type: ignore[attr-defined]
    gpu_max_mem.device_name = device_name


def patch_heareval(lightning: bool = True) -> None:
    """Make heareval 2021.1.3's runners and hear-validator run unmodified on this stack.

    Call before importing them. Idempotent; each part checks first: a TensorFlow stand-in only when
    TensorFlow is absent, the FitLoop.current_epoch setter only when missing, the NVML name fix
    only on GPU machines. `lightning=False` skips the pytorch-lightning fix, which only the
    predictions runner needs, and so its import (seconds) for hear-validator and embeddings.
    """
    if "tensorflow" not in sys.modules and importlib.util.find_spec("tensorflow") is None:
        sys.modules["tensorflow"] = _tensorflow_stand_in()
    if lightning:
        _restore_fit_loop_current_epoch()
    _decode_gpu_name()


# --------------------------------------------------------------------------------------------
# s3prl 0.4.18 on torchaudio >= 2.9: backend API, audio I/O and sox effects it still calls.
# --------------------------------------------------------------------------------------------

FULL_LOAD_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"

# soundfile subtype -> (bits_per_sample, torchaudio encoding name)
_SUBTYPE_INFO: dict[str, tuple[int, str]] = {
    "PCM_S8": (8, "PCM_S"),
    "PCM_U8": (8, "PCM_U"),
    "PCM_16": (16, "PCM_S"),
    "PCM_24": (24, "PCM_S"),
    "PCM_32": (32, "PCM_S"),
    "FLOAT": (32, "PCM_F"),
    "DOUBLE": (64, "PCM_F"),
    "ULAW": (8, "ULAW"),
    "ALAW": (8, "ALAW"),
}


@dataclasses.dataclass
class AudioMetaData:
    """What torchaudio.info used to return (s3prl reads these five fields)."""

    sample_rate: int
    num_frames: int
    num_channels: int
    bits_per_sample: int
    encoding: str


def _torchcodec_usable() -> bool:
    """True when torchcodec imports (its PyPI wheels are CUDA-linked and fail beside a CPU torch)."""
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception:  # ImportError, OSError or RuntimeError depending on what is broken
        return False
    return True


def soundfile_load(
    uri: "str | os.PathLike[str]",
    frame_offset: int = 0,
    num_frames: int = -1,
    normalize: bool = True,
    channels_first: bool = True,
    format: "str | None" = None,
    buffer_size: int = 4096,
    backend: "str | None" = None,
) -> tuple[torch.Tensor, int]:
    """torchaudio.load's contract through soundfile: float32 in [-1, 1] (or int16/int32 samples
    of PCM files with normalize=False), [channels, time] unless channels_first=False."""
    import soundfile

    dtype = "float32"
    if not normalize:
        dtype = {"PCM_16": "int16", "PCM_32": "int32"}.get(soundfile.info(str(uri)).subtype, "float32")
    data, sample_rate = soundfile.read(
        str(uri), start=frame_offset, frames=num_frames, dtype=dtype, always_2d=True, format=format
    )
    wav = torch.from_numpy(data)
    return (wav.t().contiguous() if channels_first else wav), sample_rate


def soundfile_save(
    uri: "str | os.PathLike[str]",
    src: torch.Tensor,
    sample_rate: int,
    channels_first: bool = True,
    format: "str | None" = None,
    encoding: "str | None" = None,
    bits_per_sample: "int | None" = None,
    buffer_size: int = 4096,
    backend: "str | None" = None,
    compression: object = None,
) -> None:
    """torchaudio.save's contract through soundfile. Float tensors go to 32-bit float WAV (as
    torchaudio's sox backend did, so values beyond [-1, 1] survive); int16/int32 to PCM."""
    import soundfile

    if src.dim() == 1:
        src = src.unsqueeze(0)
    if src.dim() != 2:
        raise ValueError(f"save {uri}: expected a [channels, time] tensor, got shape {tuple(src.shape)}")
    data = (src.t() if channels_first else src).detach().cpu().numpy()
    fmt = (format or pathlib.Path(str(uri)).suffix.lstrip(".") or "wav").upper()
    subtype = None  # soundfile's default for the format
    if encoding == "PCM_F":
        subtype = "DOUBLE" if bits_per_sample == 64 else "FLOAT"
    elif encoding in (None, "PCM_S") and bits_per_sample in (8, 16, 24, 32):
        subtype = "PCM_S8" if bits_per_sample == 8 else f"PCM_{bits_per_sample}"
    elif src.dtype in (torch.int16, torch.int32):
        subtype = "PCM_16" if src.dtype == torch.int16 else "PCM_32"
    elif src.is_floating_point() and fmt == "WAV":
        subtype = "FLOAT"
    soundfile.write(str(uri), data, sample_rate, subtype=subtype, format=fmt)


def soundfile_info(
    uri: "str | os.PathLike[str]", format: "str | None" = None, buffer_size: int = 4096, backend: "str | None" = None
) -> AudioMetaData:
    """torchaudio.info's contract through soundfile."""
    import soundfile

    meta = soundfile.info(str(uri))
    bits, encoding = _SUBTYPE_INFO.get(meta.subtype, (0, meta.subtype))
    return AudioMetaData(meta.samplerate, meta.frames, meta.channels, bits, encoding)


# ---- torchaudio.sox_effects stand-in ------------------------------------------------------
# s3prl 0.4.18 calls: channels, rate, gain, norm (KS, QbE, ASV, MOS loaders), silence (ASV),
# pad, trim (QbE training segments), reverse and vad (sws2013 only). All but vad are below.
SOX_EFFECTS = ["channels", "rate", "gain", "norm", "trim", "pad", "reverse", "silence"]


def _samples(spec: str, sample_rate: int, effect: str) -> int:
    """A sox time spec -> samples: '1.5' or 'hh:mm:ss.f' seconds, or '1000s' samples."""
    text = spec.strip()
    try:
        if text.endswith("s"):
            return int(text[:-1])
        seconds = 0.0
        for part in text.split(":"):
            seconds = seconds * 60 + float(part)
    except ValueError:
        raise ValueError(f"sox effect {effect!r}: cannot read time {spec!r} (seconds, hh:mm:ss or NNNs samples)") from None
    return round(seconds * sample_rate)


def _position(spec: str, sample_rate: int, total: int, base: int, effect: str) -> int:
    """A sox trim position: '=T' absolute, '-T' from the end, plain T relative to `base`."""
    if spec.startswith("="):
        return _samples(spec[1:], sample_rate, effect)
    if spec.startswith("-"):
        return total - _samples(spec[1:], sample_rate, effect)
    return base + _samples(spec, sample_rate, effect)


def _threshold(spec: str) -> float:
    """A sox silence threshold as a fraction of full scale: '0.1%' or '-60d'."""
    try:
        if spec.endswith("%"):
            return float(spec[:-1]) / 100
        if spec.endswith("d"):
            return 10 ** (float(spec[:-1]) / 20)
    except ValueError:
        pass
    raise ValueError(f"sox effect 'silence': threshold {spec!r} must end in % or d (e.g. 0.1% or -60d)")


def _peak_normalise(wav: torch.Tensor, level_db: float) -> torch.Tensor:
    peak = wav.abs().max()
    return wav if float(peak) == 0.0 else wav * (10 ** (level_db / 20) / peak)


def _silence(wav: torch.Tensor, sample_rate: int, args: list[str]) -> torch.Tensor:
    """sox `silence above_periods [dur thr] [below_periods dur thr]`, without -l.

    Loudness is the RMS over a trailing 20 ms window (sox's window, zeros before the start).
    Leading audio is dropped until a loud run of at least the above duration; after that, every
    quiet run of at least the below duration is dropped, then a negative below_periods restarts
    the leading trim, a positive one stops the output after that many quiet runs.
    """
    if "-l" in args:
        raise ValueError("sox effect 'silence': option -l is not supported by the stand-in")
    try:
        above = int(args[0])
        start_dur = _samples(args[1], sample_rate, "silence") if above else 0
        start_thr = _threshold(args[2]) if above else 0.0
        rest = args[3:] if above else args[1:]
        below = int(rest[0]) if rest else 0
        stop_dur = _samples(rest[1], sample_rate, "silence") if below else 0
        stop_thr = _threshold(rest[2]) if below else 0.0
    except IndexError:
        raise ValueError(f"sox effect 'silence': incomplete arguments {args}") from None
    if above not in (0, 1):
        raise ValueError(f"sox effect 'silence': above_periods {above} is not supported (use 0 or 1)")
    window = max(1, sample_rate // 50)
    power = torch.nn.functional.pad(wav.double().pow(2).mean(0), (window, 0)).cumsum(0)
    rms = ((power[window:] - power[:-window]) / window).clamp_min(0).sqrt()
    total = wav.shape[-1]
    loud = {"trim": rms > start_thr, "copy": rms > stop_thr}
    run_ends = {mode: _run_ends(mask) for mode, mask in loud.items()}
    keep = torch.zeros(total, dtype=torch.bool)
    mode, pos, quiet_runs = ("trim" if above else "copy"), 0, 0
    while pos < total:
        value = bool(loud[mode][pos])
        ends = run_ends[mode]
        end = int(ends[torch.searchsorted(ends, pos, right=True)])
        if mode == "trim":
            if value and end - pos >= start_dur:
                mode = "copy"
                keep[pos:end] = True
        elif value or below == 0 or end - pos < stop_dur:
            keep[pos:end] = True
        elif below < 0:
            mode = "trim" if above else "copy"
        else:
            quiet_runs += 1
            if quiet_runs >= below:
                break
        pos = end
    return wav[:, keep]


def _run_ends(mask: torch.Tensor) -> torch.Tensor:
    """Sorted exclusive end index of every constant run in a 1-D bool mask."""
    changes = torch.nonzero(mask[1:] != mask[:-1]).flatten() + 1
    return torch.cat([changes, torch.tensor([mask.numel()])])


def apply_effects_tensor(
    tensor: torch.Tensor, sample_rate: int, effects: "list[list[str]]", channels_first: bool = True
) -> tuple[torch.Tensor, int]:
    """Apply a chain of sox effects to a [channels, time] tensor (soundfile/torch stand-in for
    torchaudio.sox_effects, which torchaudio 2.9 removed). Returns (tensor, sample_rate)."""
    wav = tensor if channels_first else tensor.t()
    wav = wav.float()
    for effect in effects:
        if not effect:
            raise ValueError("sox effect chain contains an empty effect")
        name, args = str(effect[0]), [str(a) for a in effect[1:]]
        if name == "channels":
            want = int(args[0])
            if want == 1:
                wav = wav.mean(0, keepdim=True)
            elif wav.shape[0] == 1:
                wav = wav.repeat(want, 1)
            elif want != wav.shape[0]:
                raise ValueError(f"sox effect 'channels': cannot map {wav.shape[0]} channels to {want}")
        elif name == "rate":
            values = [a for a in args if not a.startswith("-")]
            if len(values) != 1:
                raise ValueError(f"sox effect 'rate': expected one rate, got {args}")
            text = values[0].lower()
            new_rate = round(float(text[:-1]) * 1000) if text.endswith("k") else round(float(text))
            if new_rate != sample_rate:
                functional = import_torchaudio().functional
                wav = functional.resample(wav, sample_rate, new_rate)
                sample_rate = new_rate
        elif name in ("gain", "norm"):
            normalise = name == "norm" or "-n" in args
            flags = [a for a in args if a.startswith("-") and not _is_number(a)]
            if set(flags) - {"-n"}:
                raise ValueError(f"sox effect {name!r}: options {sorted(set(flags) - {'-n'})} are not supported")
            levels = [float(a) for a in args if _is_number(a)]
            level = levels[0] if levels else 0.0
            wav = _peak_normalise(wav, level) if normalise else wav * 10 ** (level / 20)
        elif name == "trim":
            total = wav.shape[-1]
            start = _position(args[0], sample_rate, total, 0, "trim")
            end = _position(args[1], sample_rate, total, start, "trim") if len(args) > 1 else total
            wav = wav[:, max(0, start) : max(0, min(end, total))]
        elif name == "pad":
            if any("@" in a for a in args):
                raise ValueError("sox effect 'pad': length@position is not supported by the stand-in")
            before = _samples(args[0], sample_rate, "pad") if args else 0
            after = _samples(args[1], sample_rate, "pad") if len(args) > 1 else 0
            wav = torch.nn.functional.pad(wav, (before, after))
        elif name == "reverse":
            wav = wav.flip(-1)
        elif name == "silence":
            wav = _silence(wav, sample_rate, args)
        else:
            raise ValueError(
                f"sox effect {name!r} is not available in this torchaudio ({SOX_EFFECTS} are emulated); "
                "use a torchaudio build with libsox for it"
            )
    return (wav if channels_first else wav.t()), sample_rate



def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def apply_effects_file(
    path: "str | os.PathLike[str]",
    effects: "list[list[str]]",
    normalize: bool = True,
    channels_first: bool = True,
    format: "str | None" = None,
) -> tuple[torch.Tensor, int]:
    """Read an audio file with soundfile, then `apply_effects_tensor`."""
    wav, sample_rate = soundfile_load(path, format=format)
    return apply_effects_tensor(wav, sample_rate, effects, channels_first=channels_first)


def _add_backend_noops(torchaudio: ModuleType) -> list[str]:
    """torchaudio 2.9 removed the backend switch s3prl calls at import time; I/O here has one backend."""
    added = []
    if not hasattr(torchaudio, "set_audio_backend"):
        torchaudio.set_audio_backend = lambda backend=None: None  # type: ignore[attr-defined]
        added.append("torchaudio.set_audio_backend")
    if not hasattr(torchaudio, "get_audio_backend"):
        torchaudio.get_audio_backend = lambda: "soundfile"  # type: ignore[attr-defined]
        added.append("torchaudio.get_audio_backend")
    return added


def _add_soundfile_io(torchaudio: ModuleType) -> list[str]:
    """load/save/info through soundfile where they are missing or route to an unusable torchcodec."""
    codec_backed = hasattr(torchaudio, "load_with_torchcodec") and not _torchcodec_usable()
    added = []
    for name, replacement in (("load", soundfile_load), ("save", soundfile_save), ("info", soundfile_info)):
        current = getattr(torchaudio, name, None)
        if current is None or (codec_backed and name in ("load", "save") and current is not replacement):
            setattr(torchaudio, name, replacement)
            added.append(f"torchaudio.{name}")
    return added


def _add_sox_effects(torchaudio: ModuleType) -> list[str]:
    """Install the `torchaudio.sox_effects` stand-in when torchaudio has no such module."""
    existing = sys.modules.get("torchaudio.sox_effects")
    if existing is not None:  # imported (a real one, or ours): only make sure the attribute points at it
        if getattr(torchaudio, "sox_effects", None) is existing:
            return []
        torchaudio.sox_effects = existing  # type: ignore[attr-defined]
        return ["torchaudio.sox_effects"]
    if importlib.util.find_spec("torchaudio.sox_effects") is not None:
        return []
    module = ModuleType("torchaudio.sox_effects", "soundfile/torch stand-in installed by usad_upstream.compat")
    module.apply_effects_tensor = apply_effects_tensor  # type: ignore[attr-defined]
    module.apply_effects_file = apply_effects_file  # type: ignore[attr-defined]
    module.effect_names = lambda: list(SOX_EFFECTS)  # type: ignore[attr-defined]
    sys.modules["torchaudio.sox_effects"] = module
    torchaudio.sox_effects = module  # type: ignore[attr-defined]
    return ["torchaudio.sox_effects"]


def _allow_full_torch_load() -> list[str]:
    """torch >= 2.6 loads weights-only by default; s3prl's runner checkpoints pickle an
    argparse.Namespace (`-e` resume, `-m evaluate`), so allow full loads unless the user decided."""
    if FULL_LOAD_ENV in os.environ or torch.__version__ < "2.6":
        return []
    os.environ[FULL_LOAD_ENV] = "1"
    return [FULL_LOAD_ENV]


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `fix(module)` right after the module `name` is executed, whenever it is imported."""

    def __init__(self, name: str, fix: "Callable[[ModuleType], bool]") -> None:
        self.name, self.fix = name, fix

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> "importlib.machinery.ModuleSpec | None":
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # let the normal finders locate it, once
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module, fix = spec.loader.exec_module, self.fix

        def exec_and_fix(module: ModuleType) -> None:
            exec_module(module)
            fix(module)

        spec.loader.exec_module = exec_and_fix  # type: ignore[method-assign]
        return spec


def after_import(name: str, fix: "Callable[[ModuleType], bool]") -> bool:
    """Apply `fix` to module `name` now if it is imported, else as soon as it is. False when
    there was nothing to do (already fixed, or the hook already waits for the import)."""
    if name in sys.modules:
        return fix(sys.modules[name])
    if any(isinstance(f, _AfterImport) and f.name == name for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, _AfterImport(name, fix))
    return True


@contextlib.contextmanager
def _cuda_returns_self() -> Iterator[None]:
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


def _sv_mask_stays_on_cpu(module: ModuleType) -> bool:
    """s3prl's sv_voxceleb1 expert (ASV) moves its attention mask with an unconditional
    `.cuda()` in forward, so it cannot run without CUDA. On such a machine its forward runs with
    `Tensor.cuda` returning the tensor itself (the mask stays where the features are)."""
    expert = module.DownstreamExpert
    if getattr(expert.forward, "_usad_cpu", False):
        return False
    forward = expert.forward

    @functools.wraps(forward)
    def forward_on_cpu(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        with _cuda_returns_self():
            return forward(self, *args, **kwargs)

    forward_on_cpu._usad_cpu = True  # type: ignore[attr-defined]
    expert.forward = forward_on_cpu
    return True


SV_EXPERT = "s3prl.downstream.sv_voxceleb1.expert"


def patch_s3prl() -> list[str]:
    """Make s3prl 0.4.18 import and run on this torch/torchaudio; call before importing s3prl.

    Idempotent: each patch checks first and adds only what is missing. Returns what it added.
    """
    torchaudio = import_torchaudio()
    added = (
        _add_backend_noops(torchaudio)
        + _add_soundfile_io(torchaudio)
        + _add_sox_effects(torchaudio)
        + _allow_full_torch_load()
    )
    if not torch.cuda.is_available() and after_import(SV_EXPERT, _sv_mask_stays_on_cpu):
        added.append(f"{SV_EXPERT} on CPU")
    return added


def patch_xares() -> list[str]:
    """Make xares 0.1.3 (X-ARES) import and read its WebDataset audio on this stack; call
    before importing xares. Idempotent; returns what it added.

    xares imports torchaudio at top level (its native extension cannot load beside a CPU
    torch), and webdataset's `torch_audio` decoder reads every clip with `torchaudio.load`,
    which torchaudio >= 2.9 routes to torchcodec. xares decodes with a handler that only warns
    and skips a sample that fails, so without soundfile I/O every clip would be dropped in silence.
    """
    return _add_soundfile_io(import_torchaudio())
