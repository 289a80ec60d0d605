#!/usr/bin/env bash
# The GPU half of the benchmark in one run, for a machine with one CUDA GPU and nothing to
# download: the `usad bench` table in bf16, distillation steps of USAD Base with both teachers
# (eager and torch.compile), and a kernel profile of one step. Writes into $OUT (~5 min on an H100).
#   OUT=results/bench bash results/bench/run_gpu.sh
# Packages the GPU machine lacks can travel in .whl/ (wheels, plus site/ for pure-Python trees);
# on the lent H100 these were s3prl, soundfile, cffi, pycparser and tensorboardX.
set -uo pipefail
OUT=${OUT:-results/bench}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}  # dense bf16 peak of an H100 SXM (H200: the same)
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/.whl/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv >"$OUT/gpu.txt"
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())' >>"$OUT/gpu.txt"

bench() { python3 -m usad_upstream.cli bench --device cuda --threads 8 --peak-tflops "$PEAK_TFLOPS" --hear-minutes 0 \
            --workdir /tmp/usad-bench "$@"; }
# 1. the table: every model, batch 1 / 8 / 32 x 10 s, the length sweep, eager distillation steps
bench --batches 1,8,32 --repeats 5 --distill-batches 8,32,64 --out "$OUT" 2>&1 | grep -v 'it/s\]' | tee "$OUT/bench.log"
# 2. where the eager step's time goes: top CUDA kernels of 3 steps at batch 32 x 10 s
python3 - >"$OUT/profile.txt" 2>&1 <<'EOF'
import torch
from usad_upstream.bench import _inputs, _teacher, distill_step
from pathlib import Path
dev = torch.device("cuda")
teachers = {"wavlm": _teacher("wavlm", Path("/tmp/usad-bench"), dev), "atst": _teacher("atst_frame", Path("/tmp/usad-bench"), dev)}
step = distill_step("base", teachers, dev)
wavs, lens = _inputs(32, 10.0, dev)
for _ in range(2):
    step(wavs, lens)
torch.cuda.synchronize()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
    for _ in range(3):
        step(wavs, lens)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90))
EOF
# 3. the same distillation step with the student + heads compiled (~3 min)
bench --models usad_base --batches 1 --lengths '' --repeats 5 --distill-batches 32,64 --compile --out "$OUT/compiled" 2>&1 \
  | grep -v 'it/s\]' | tail -20 | tee -a "$OUT/bench.log"
tail -3 "$OUT/profile.txt"
ls -laR "$OUT"
