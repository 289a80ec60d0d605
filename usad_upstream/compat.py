"""The one compatibility layer between this modern stack and torchaudio / s3prl / heareval.

Every patch checks first and only adds what is missing, so it is a no-op on stacks that work.
"""
from __future__ import annotations

import contextlib
import importlib.util
import pathlib
import sys
from types import ModuleType
from typing import Iterator


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
    resample and lfilter are pure Python and keep working."""
    if "torchaudio" in sys.modules:
        return sys.modules["torchaudio"]
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
