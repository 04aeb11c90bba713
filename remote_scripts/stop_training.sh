#!/usr/bin/env bash
# Ends a training gracefully, then removes its tmux session; harmless when none runs:
#
#   stop_training.sh RUN_DIR SESSION WAIT_SECONDS
#
# SIGTERM to the launcher (launch.json's pid), which passes it to the trainer: it finishes
# the current epoch, saves its backup and exits 3 (stopped). If it has not ended after
# WAIT_SECONDS, a second SIGTERM stops it at once; the backup of the last finished epoch stays.
set -euo pipefail
run_dir="$1" session="$2" wait_s="$3"

if ! tmux has-session -t "=$session" 2>/dev/null; then
  echo "No training is running (no tmux session $session)."
  exit 0
fi
pid="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["pid"])' "$run_dir/launch.json" 2>/dev/null || true)"
wait_for_exit() {
  local i
  for ((i = 0; i < $1; i++)); do
    [ -e "$run_dir/exit.json" ] && return 0
    sleep 1
  done
  return 1
}
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
  echo "Asking the training to stop after its current epoch (SIGTERM to pid $pid), waiting up to ${wait_s}s ..."
  kill -TERM "$pid"
  if ! wait_for_exit "$wait_s"; then
    echo "Still running after ${wait_s}s: stopping at once (second SIGTERM); the backup of the last finished epoch stays."
    kill -TERM "$pid" 2>/dev/null || true
    wait_for_exit 60 || echo "The trainer did not exit within 60s more; removing its tmux session."
  fi
fi
tmux kill-session -t "=$session" 2>/dev/null || true
if [ -e "$run_dir/exit.json" ]; then
  echo "Stopped: $(cat "$run_dir/exit.json")"
else
  echo "The tmux session $session is gone; the run left no exit record."
fi
