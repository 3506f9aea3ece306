#!/usr/bin/env bash
# make gpu-check: prove the GPU path on a machine with CUDA and an installed CUDA torch (the Docker image,
# or any environment with pose_mcore installed). Creates no venv and downloads nothing. Sized to finish in
# about 8 minutes on one H100: every step has a time limit, and the summary is rewritten after each step,
# so a step that runs out of time (or a killed run) still leaves what was measured.
#
#   1. the default pipeline (teacher, Phase I, Phase II) on one GPU in bf16 autocast, GPU_CHECK_STEPS steps
#      per phase (and at TP=2 where two GPUs exist)
#   2. the kernel benchmark at Wan2.1-14B shapes (tools/bench_kernels.py)
#   3. the DiT training-step benchmark against diffusers (tools/bench_model.py)
#   4. the training engine at a real model's size: Wan2.1-T2V-1.3B at 21x60x104 latents (480p, 81 frames),
#      micro-batch 1, every block recomputed, teacher, Phase I and Phase II steps: the engine before this
#      one (fp32 weights under bf16 autocast, replicated Adam, reduction after backward: precision=amp)
#      against the config's (bf16 weights, fp32 main weights) (tools/bench_train.py: s/step, peak GiB, MFU), and
#      the memory model's prediction of each step beside its max_memory_allocated (--predict)
#   5. the test suite on the GPU (kernels as compiled Triton, models on CUDA, multi-rank tests on CPU ranks
#      when there are fewer GPUs than ranks), in parallel processes when pytest-xdist is installed, with the
#      time left of GPU_CHECK_BUDGET (at least 2 minutes); tests marked cpu_only (CUDA hidden by
#      construction: the memory model's fake-tensor traces) are left to the CPU CI unless GPU_CHECK_TESTS
#      says otherwise
# and prints one summary table ($OUT/gpu_check_summary.md). Logs go to $OUT (default outputs/gpu-check).
# Without a GPU it says so and exits 1.
#
# Environment: PYTHON (default python3), OUT, GPU_CHECK_BUDGET (seconds for the whole check, default 480;
# the tests get what the steps before them left), GPU_CHECK_STEPS (pipeline steps per phase, default 100),
# GPU_CHECK_TESTS (pytest arguments split at spaces, default: -m "not cpu_only" tests), GPU_CHECK_WORKERS
# (pytest-xdist processes, default: half the cores, at most 8; 0 or 1 runs the tests in one process).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-outputs/gpu-check}"
STEPS="${GPU_CHECK_STEPS:-100}"
BUDGET="${GPU_CHECK_BUDGET:-480}"
mkdir -p "$OUT"

if ! "$PYTHON" -c "import torch, pose_mcore" 2>/dev/null; then
  echo "gpu-check: $PYTHON cannot import torch and pose_mcore: install torch (a CUDA build) and this package" \
       "(pip install --no-deps -e .) first, or use the Docker image." >&2
  exit 1
fi
if ! device=$("$PYTHON" - 2>/dev/null <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(1)
print(f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF
); then
  echo "gpu-check: no CUDA device is visible to $PYTHON (torch.cuda.is_available() is False): nothing to check here." >&2
  echo "gpu-check: run it on a machine with a GPU and a CUDA build of torch (e.g. the Docker image)." >&2
  exit 1
fi
echo "gpu-check: $device; logs in $OUT"

summary=()
failed=0
write_summary() {
  {
    echo "gpu-check on $device ($(date -u +%Y-%m-%d))"
    echo
    echo "| step | result | seconds | last line |"
    echo "| --- | --- | ---: | --- |"
    printf '%s\n' "${summary[@]}"
  } >"$OUT/gpu_check_summary.md"
}
step() {  # step NAME LOG LIMIT_SECONDS COMMAND...: run with a time limit, record its last line
  local name=$1 log=$2 limit=$3
  shift 3
  local start=$SECONDS
  echo "== $name (at most ${limit}s): $*"
  timeout -k 10 "$limit" "$@" >"$log" 2>&1
  local rc=$?
  local took=$((SECONDS - start))
  local last status
  last=$(grep -vE "^\s*$" "$log" | tail -n 1 | cut -c1-110)
  if [[ $rc -eq 0 ]]; then status=ok; elif [[ $rc -eq 124 ]]; then status="TIMED OUT (${limit}s)"; failed=1
  else status="FAILED (exit $rc)"; failed=1; fi
  echo "   $status in ${took}s: $last"
  summary+=("| $name | $status | $took | ${last//|//} |")
  write_summary
}

rm -rf "$OUT/run" "$OUT/run_tp2"
step "default pipeline, 1 GPU, bf16" "$OUT/pipeline.log" 150 env NPROC=1 PYTHON="$PYTHON" \
  bash examples/pretrain_pose.sh tensor_parallel=1 "output_dir=$OUT/run" "teacher.steps=$STEPS" \
  "phase1.steps=$STEPS" "phase2.steps=$STEPS" checkpoint_every=50 log_every=25
gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
if [[ "$gpus" -ge 2 ]]; then
  step "default pipeline, TP=2" "$OUT/pipeline_tp2.log" 150 env NPROC=2 PYTHON="$PYTHON" \
    bash examples/pretrain_pose.sh tensor_parallel=2 "output_dir=$OUT/run_tp2" teacher.steps=50 phase1.steps=50 \
    phase2.steps=50
fi

step "kernel benchmark (Wan2.1-14B shapes)" "$OUT/bench_kernels.log" 60 "$PYTHON" tools/bench_kernels.py
step "DiT step benchmark vs diffusers" "$OUT/bench_model.log" 75 "$PYTHON" tools/bench_model.py --reps 3
step "engine, Wan2.1-1.3B 480p, 1 GPU" "$OUT/bench_train.log" 180 "$PYTHON" -m torch.distributed.run --standalone \
  --nproc-per-node 1 tools/bench_train.py --config tiny-cpu --steps 1 --predict \
  --baseline precision=amp distributed_optimizer=false overlap_grad_reduce=false \
  -- tensor_parallel=1 preset=wan2.1-t2v-1.3b micro_batch_size=1 global_batch_size=1 data.frames=21 data.height=60 data.width=104 \
  data.size=16 model.recompute_granularity=full model.recompute_method=uniform model.recompute_num_layers=1 \
  phase1.fake_updates=1 phase2.head_dim=64 phase2.head_queries=16 phase2.head_heads=4

workers="${GPU_CHECK_WORKERS:-$(( $(nproc) / 2 < 8 ? $(nproc) / 2 : 8 ))}"
parallel=()
if [[ "$workers" -gt 1 ]] && "$PYTHON" -c "import xdist" 2>/dev/null; then
  parallel=(-n "$workers" --dist loadfile)
fi
if [[ -n "${GPU_CHECK_TESTS:-}" ]]; then
  read -r -a tests <<<"$GPU_CHECK_TESTS"
else
  tests=(-m "not cpu_only" tests)
fi
left=$((BUDGET - SECONDS))
step "test suite on the GPU" "$OUT/tests.log" $((left > 120 ? left : 120)) "$PYTHON" -m pytest -q \
  -p no:cacheprovider --durations=15 "${parallel[@]}" "${tests[@]}"

cat "$OUT/gpu_check_summary.md"
echo
for log in bench_kernels bench_model bench_train; do
  echo "--- $log"
  grep -vE "^\s*$" "$OUT/$log.log" | tail -n 40
done
exit $failed
