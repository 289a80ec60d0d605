#!/usr/bin/env bash
# Issue 23's GPU measurement in one run (< 10 min on an H100/H200): `usad bench --gpu-suite`
# (usad_upstream/bench_gpu.py) writes suite.json, suite.md and profile.txt into $OUT and prints
# the table of targets. Stages, most important first (those that would start after BUDGET_S are
# skipped): batched fbank vs the per-item loop; USAD vs WavLM Base+ / ATST-Frame at batch 1/8/32
# with MFU; distillation steps (bf16 teachers, cached targets); batch 1/8 eager vs torch.compile
# vs CUDA graph; implementation variants at batch 32 (cuDNN attention, FlexAttention, bf16
# weights, the teachers' FFT conv and FlexAttention); attention copies per kernel;
# cudnn.benchmark A/B; a kernel profile; the compiled step.
#
#   bash results/bench/run_gpu.sh --prepare   # here, once: what the GPU machine lacks -> .gpu-carry/
#   bash results/bench/run_gpu.sh             # there: the suite (carry .gpu-carry; OUT is set there)
#   bash results/bench/run_gpu.sh --smoke     # here, on the CPU: the same stages on tiny models
#
# The GPU machine has torch/torchaudio but no s3prl and no network: --prepare copies s3prl's two
# WavLM files (WavLM.py, modules.py: torch and numpy only) into .gpu-carry/s3prl_wavlm/, which
# usad_upstream/teachers/wavlm.py imports when s3prl is absent (USAD_S3PRL_WAVLM_DIR).
set -uo pipefail
cd "$(dirname "$0")/../.."
CARRY=.gpu-carry
PEAK_TFLOPS=${PEAK_TFLOPS:-989}  # dense bf16 peak of an H100 SXM / H200 (spec sheet)
BUDGET_S=${BUDGET_S:-500}        # later stages are skipped once this much time has gone
STAGES=${STAGES:-}               # e.g. STAGES=variants,profile for a second, shorter call

if [ "${1:-}" = "--prepare" ]; then
  PY=${PYTHON:-.venv/bin/python}
  src=$("$PY" -c 'import importlib.util as u, pathlib as p; s = u.find_spec("s3prl"); print(p.Path(list(s.submodule_search_locations)[0]) / "upstream" / "wavlm")') || exit 1
  mkdir -p "$CARRY/s3prl_wavlm" && cp "$src/WavLM.py" "$src/modules.py" "$CARRY/s3prl_wavlm/" || exit 1
  exclude=$(git rev-parse --git-path info/exclude) && mkdir -p "$(dirname "$exclude")"
  grep -qx "/$CARRY/" "$exclude" 2>/dev/null || echo "/$CARRY/" >>"$exclude"
  echo "prepared $CARRY/ ($(du -sh "$CARRY" | cut -f1)); run on the GPU machine with carry [\"$CARRY\"]: bash results/bench/run_gpu.sh"
  exit 0
fi

export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
[ -d "$CARRY/s3prl_wavlm" ] && export USAD_S3PRL_WAVLM_DIR=$PWD/$CARRY/s3prl_wavlm
if [ "${1:-}" = "--smoke" ]; then
  OUT=${OUT:-$(mktemp -d /tmp/usad-gpu-smoke.XXXX)}
  exec "${PYTHON:-.venv/bin/python}" -m usad_upstream.cli bench --gpu-suite --smoke --device cpu --threads 2 \
    --workdir "$OUT/work" --out "$OUT" --budget-s 100000
fi

OUT=${OUT:-results/bench/gpu-suite}
mkdir -p "$OUT"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv
  python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda, torch.cuda.get_device_name(), "cudnn", torch.backends.cudnn.version())'
} 2>&1 | tee "$OUT/gpu.txt"
timeout 570 python3 -m usad_upstream.cli bench --gpu-suite --device cuda --threads 8 --peak-tflops "$PEAK_TFLOPS" \
  --budget-s "$BUDGET_S" --stages "$STAGES" --workdir /tmp/usad-gpu-suite --out "$OUT" 2>&1 | grep --line-buffered -v 'it/s\]' | tee "$OUT/suite.log"
ls -la "$OUT"
