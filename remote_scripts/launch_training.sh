#!/usr/bin/env bash
# Runs one training on the host; `fab train` starts it inside a detached tmux session:
#
#   launch_training.sh VENV PROJECT_DIR RUN_DIR TRAINER_ARGS...
#
# The trainer's output goes to RUN_DIR/train.log. Around it run_state.py (the one owner of the
# run-file format) records
#   RUN_DIR/launch.json   this launch's id, when it started, this script's pid and process group
#                         (with the group leader's start time), the command
#   RUN_DIR/exits/<launch id>.json, linked as RUN_DIR/exit.json
#                         the trainer's exit code, when it ended and why (reserved up front, so
#                         it is written even on a full disk)
# and points RUNS_DIR/.current at the run, so that afterwards nobody has to guess whether
# the run finished or died: a run with no live process of that group and no exit record
# vanished (reboot, kill -9). The launch is refused (exit 2, nothing recorded) while a process
# of the run's previous launch lives. SIGTERM/SIGHUP/SIGINT are passed on to the trainer,
# which finishes its epoch, saves its backup and exits 3 (stopped). With FACENET_STORAGE (JSON,
# set by the deploy when the inventory has storage.url) the run's uploader starts beside it.
set -euo pipefail

if [ "$#" -lt 4 ]; then
  echo "usage: $0 VENV PROJECT_DIR RUN_DIR TRAINER_ARGS..." >&2
  exit 2
fi
venv="$1" project="$2" run_dir="$3"
shift 3
here="$(cd "$(dirname "$0")" && pwd)"
run_state() { python3 "$here/run_state.py" "$@"; }

if [ -L "$run_dir" ]; then
  echo "refusing to start: the run directory $run_dir is a link" >&2
  exit 2
fi
mkdir -p "$run_dir"
log="$run_dir/train.log"
now() { date -u +%Y-%m-%dT%H:%M:%S+00:00; }
say() { echo "[launch] $(now) $*" >> "$log" 2>/dev/null || true; }  # a full disk must not stop the launcher

# `>> "$log"` follows a link: a run dir holding one (a tampered upload: train.log -> ~/.ssh/authorized_keys)
# would have this script and the trainer write through it. Refuse, with an exit record that names them.
special="$(find -P "$run_dir" -mindepth 1 ! -type f ! -type d -printf '%P (%y %l)  ' 2>/dev/null | head -c 1000 || true)"
if [ -n "$special" ]; then
  launch_id="$(run_state record-launch "$run_dir" "$$" "python -m trainer $*" 2>/dev/null)" || exit 2
  run_state record-exit "$run_dir" 2 "$launch_id" "refused to start: the run directory holds entries that are not regular files or folders (l: a link): $special" > /dev/null
  exit 2
fi

if ! launch_id="$(run_state record-launch "$run_dir" "$$" "python -m trainer $*" 2>>"$log")"; then
  say "launch refused (the line above says why); nothing was started"
  exit 2
fi
say "python -m trainer $* (launch $launch_id)"

code=0
if [ ! -x "$venv/bin/python" ]; then
  say "no Python in the venv $venv: run \`fab provision\`"
  code=2
elif ! cd "$project"; then
  say "project directory $project is missing: run \`fab sync-code\`"
  code=2
else
  if [ -n "${FACENET_STORAGE:-}" ]; then
    # A checkpoint in object storage every epoch (trainer/storage/uploader.py): in a session of its own, so that a stop
    # of this run's process group leaves it to store the last epoch; it exits once it has stored the run's end.
    PYTHONUNBUFFERED=1 "$venv/bin/python" -m trainer.storage.uploader "$run_dir" "$launch_id" >> "$run_dir/storage.log" 2>&1 < /dev/null &
    say "storage: uploader pid $! (its state: $run_dir/storage.json)"
  fi
  # FACENET_LAUNCH_ID: the trainer stops at an epoch end once RUN/fenced.json names this launch (the run moved on)
  FACENET_LAUNCH_ID="$launch_id" PYTHONUNBUFFERED=1 "$venv/bin/python" -m trainer "$@" >> "$log" 2>&1 &
  child=$!
  trap 'kill -TERM "$child" 2>/dev/null || true' TERM HUP INT
  wait "$child" || code=$?
  # A trapped signal interrupts `wait`; wait again for the trainer's own exit code.
  while kill -0 "$child" 2>/dev/null; do
    code=0
    wait "$child" || code=$?
  done
fi

run_state record-exit "$run_dir" "$code" "$launch_id" > /dev/null
say "trainer exited with code $code"
exit "$code"
