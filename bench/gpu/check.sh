#!/usr/bin/env bash
# The whole GPU check as ONE device call (a few minutes of a 15-min budget; each step has its own time limit, together under 9 min), after
# bench/gpu/prepare.sh here (docs/gpu.md):
#   run(command="bash bench/gpu/check.sh", carry=[".whl"], timeout_s=580)
# Everything it prints is also in $OUT/gpu-check.log; the bench CSV rows in $OUT/results.csv.
# DEVICE=cpu SMALL=1 bash bench/gpu/check.sh   rehearses it here in a few minutes.
set -uo pipefail
OUT=${OUT:-/tmp/fade-gpu-out}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
rm -rf /tmp/fade-site
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/fade-site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/fade-site
REPO=$PWD
cd /tmp  # import the installed fade_cli, not the checkout
CSV="$OUT/results.csv"
if [ -n "${SMALL:-}" ]; then  # rehearsal sizes
  N1=1; NB=2; B=2; SC="--scales 240"; AW="--windows 2"; PR="--images 1 --precisions bf16"; MS="--scales 240,448"
else
  N1=16; NB=128; B=32; SC=""; AW=""; PR="--images 4"; MS=""
fi
step() { echo; echo "== ${*:2}"; timeout "$1" "${@:2}" || echo "!! failed ($?): ${*:2}"; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  "$PY" -c "import torch, open_clip, fade_cli; print('torch', torch.__version__, '| open_clip', open_clip.__version__, '| fade_cli', fade_cli.__file__, '| cuda', torch.cuda.is_available())"
  # fp16/bf16 against fp32 on the device, FADE and ALFA (documented bound: 1e-2)
  step 75 "$PY" "$REPO/bench/bench_precision.py" --device "$DEVICE" $PR $SC --csv "$CSV"
  step 40 "$PY" "$REPO/bench/bench_precision.py" --device "$DEVICE" $PR $AW --methods alfa --prompt-filter none --csv ""
  # 3-scale 0-/1-shot FADE at batch 1, then batched in each precision (the <= 20 ms/image target)
  step 60 "$PY" "$REPO/bench/bench_fade.py" --device "$DEVICE" --shots 0,1 --images $N1 --batch-size 1 $SC --csv "$CSV"
  for p in fp32 bf16 fp16; do
    [ "$DEVICE" = cpu ] && [ $p != fp32 ] && continue  # the CLI refuses half precision on CPU
    step 60 "$PY" "$REPO/bench/bench_fade.py" --device "$DEVICE" --precision $p --shots 0 --images $NB --batch-size $B $SC --csv "$CSV"
  done
  step 50 "$PY" "$REPO/bench/bench_alfa.py" --device "$DEVICE" --images $NB --batch-size $B $AW --shots 0 --csv "$CSV"
  # peak memory per scale and batch (the 896 bound in docs/limits.md)
  step 50 "$PY" "$REPO/bench/bench_memory.py" --device "$DEVICE" --batches 1,$B $MS
  [ "$DEVICE" = cuda ] && step 40 "$PY" "$REPO/bench/bench_memory.py" --device cuda --batches 1,$B --scales 896 --precision bf16
  # the host side that must keep up: reading and resizing on this machine's cores
  step 40 "$PY" "$REPO/bench/bench_host.py" --images 64 --batch-size $B --csv "$CSV"
} 2>&1 | tee "$OUT/gpu-check.log"
