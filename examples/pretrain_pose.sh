#!/usr/bin/env bash
# pose_mcore launcher.
#
#   bash examples/pretrain_pose.sh [options]        starts torchrun itself (NPROC ranks per node)
#   torchrun --no-python --nproc-per-node N examples/pretrain_pose.sh [options]
#                                                    runs under an existing torchrun: execs the entry point
#
# Environment: NPROC (default 2), NNODES (1), NODE_RANK (0), MASTER_ADDR, MASTER_PORT (29500),
# PYTHON (default: python3). Options go to `python -m pose_mcore.cli` (see --help).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"

# megatron-core announces at import that it falls back to torch without transformer-engine / apex
export PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}ignore:Transformer Engine and Apex are not installed"

if [[ -n "${TORCHELASTIC_RUN_ID:-}" || -n "${LOCAL_RANK:-}" ]]; then
  exec "$PYTHON" -m pose_mcore.cli "$@"
fi

NPROC="${NPROC:-2}"
NNODES="${NNODES:-1}"
if [[ "$NNODES" == 1 && -z "${MASTER_ADDR:-}" ]]; then
  rendezvous=(--standalone)
else
  rendezvous=(--nnodes "$NNODES" --node-rank "${NODE_RANK:-0}" --master-addr "${MASTER_ADDR:?set MASTER_ADDR for multi-node runs}"
              --master-port "${MASTER_PORT:-29500}")
fi
# Without CUDA each rank gets one CPU thread, so ranks do not fight over cores.
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
fi
# A bad config is refused here, in one line per problem, before any rank starts.
WORLD_SIZE=$((NPROC * NNODES)) "$PYTHON" -m pose_mcore.cli --validate "$@" || exit $?
status=0
"$PYTHON" -m torch.distributed.run "${rendezvous[@]}" --nproc-per-node "$NPROC" --no-python \
  "$here/pretrain_pose.sh" "$@" || status=$?
if [[ $status -ne 0 ]]; then
  echo "pretrain_pose.sh: the run stopped: a rank failed or was killed (exit status $status; torchrun's report" \
       "above names the rank). Run the same command with --resume to continue from the latest checkpoint." >&2
fi
exit $status
