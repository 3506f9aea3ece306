#!/usr/bin/env bash
# pose_mcore launcher.
#
#   bash examples/pretrain_pose.sh [options]        starts torchrun itself (NPROC ranks per node)
#   torchrun --no-python --nproc-per-node N examples/pretrain_pose.sh [options]
#                                                    runs under an existing torchrun: execs the entry point
#
# Environment: NPROC (default 2), NNODES (1), NODE_RANK (0), MASTER_ADDR, MASTER_PORT (29500),
# PYTHON (default: python3). Options go to `python -m pose_mcore.cli` (see --help). Several nodes: one launcher
# per node with the same MASTER_ADDR / MASTER_PORT, and either NODE_RANK on each (static rendezvous) or
# RDZV_ID=<job id> (torchrun's c10d rendezvous: the nodes find their ranks themselves; what
# examples/slurm/pretrain_pose.sbatch uses).
#
# SIGUSR1 or SIGTERM sent to this script is passed on to the ranks (not to torchrun, which would kill them): they
# finish their step, checkpoint it and stop; the script then exits with status 75 ("stopped; resume with
# --resume"), which examples/slurm/pretrain_pose.sbatch requeues on. Exit 0: the run finished.
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
elif [[ -n "${RDZV_ID:-}" ]]; then
  rendezvous=(--nnodes "$NNODES" --rdzv-backend c10d --rdzv-id "$RDZV_ID"
              --rdzv-endpoint "${MASTER_ADDR:?set MASTER_ADDR for multi-node runs}:${MASTER_PORT:-29500}")
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
STOP_STATUS=75
POSE_STOP_FILE="$(mktemp "${TMPDIR:-/tmp}/pose-stop.XXXXXX")"
export POSE_STOP_FILE
trap 'rm -f "$POSE_STOP_FILE"' EXIT
"$PYTHON" -m torch.distributed.run "${rendezvous[@]}" --nproc-per-node "$NPROC" --no-python \
  "$here/pretrain_pose.sh" "$@" &
torchrun_pid=$!
forward() {  # the ranks are torchrun's children (this script exec'd into python)
  echo "pretrain_pose.sh: $1 received: asking the ranks to checkpoint and stop" >&2
  pkill "-$1" -P "$torchrun_pid" || true
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
trap 'forward TERM' INT  # Ctrl-C: the ranks (started in the background, so deaf to SIGINT) stop cleanly too
status=0
while true; do  # a trapped signal interrupts `wait`; wait again until torchrun itself has ended
  wait "$torchrun_pid" && status=0 || status=$?
  kill -0 "$torchrun_pid" 2>/dev/null || break
done
trap - USR1 TERM INT
if [[ -s "$POSE_STOP_FILE" ]]; then
  echo "pretrain_pose.sh: $(cat "$POSE_STOP_FILE")" >&2
  exit $STOP_STATUS
fi
if [[ $status -ne 0 ]]; then
  echo "pretrain_pose.sh: the run stopped: a rank failed or was killed (exit status $status; torchrun's report" \
       "above names the rank). Run the same command with --resume to continue from the latest checkpoint." >&2
fi
exit $status
