#!/usr/bin/env bash
# Runs one training on the host; `fab train` starts it inside a detached tmux session:
#
#   launch_training.sh VENV PROJECT_DIR RUN_DIR TRAINER_ARGS...
#
# The trainer's output goes to RUN_DIR/train.log. Around it this script records
#   RUN_DIR/launch.json   when it started, this script's pid, the command
#   RUN_DIR/exit.json     the trainer's exit code and when it ended
# and points RUNS_DIR/.current at the run, so that afterwards nobody has to guess whether
# the run finished or died: a run with neither a live session nor exit.json vanished
# (reboot, kill -9). SIGTERM/SIGHUP/SIGINT are passed on to the trainer, which finishes
# its epoch, saves its backup and exits 3 (stopped).
set -euo pipefail

if [ "$#" -lt 4 ]; then
  echo "usage: $0 VENV PROJECT_DIR RUN_DIR TRAINER_ARGS..." >&2
  exit 2
fi
venv="$1" project="$2" run_dir="$3"
shift 3

mkdir -p "$run_dir"
log="$run_dir/train.log"
now() { date -u +%Y-%m-%dT%H:%M:%S+00:00; }
json_string() { python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }

rm -f "$run_dir/exit.json"
basename "$run_dir" > "$(dirname "$run_dir")/.current"
printf '{"started_at": "%s", "pid": %d, "command": %s}\n' \
  "$(now)" "$$" "$(json_string "python -m trainer $*")" > "$run_dir/launch.json"
echo "[launch] $(now) python -m trainer $*" >> "$log"

code=0
if [ ! -x "$venv/bin/python" ]; then
  echo "[launch] no Python in the venv $venv: run \`fab provision\`" >> "$log"
  code=2
elif ! cd "$project"; then
  echo "[launch] project directory $project is missing: run \`fab sync-code\`" >> "$log"
  code=2
else
  # INFO lines of TensorFlow's C++ core would drown the log that `fab monitor` tails.
  TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}" PYTHONUNBUFFERED=1 "$venv/bin/python" -m trainer "$@" >> "$log" 2>&1 &
  child=$!
  trap 'kill -TERM "$child" 2>/dev/null || true' TERM HUP INT
  wait "$child" || code=$?
  # A trapped signal interrupts `wait`; wait again for the trainer's own exit code.
  while kill -0 "$child" 2>/dev/null; do
    code=0
    wait "$child" || code=$?
  done
fi

printf '{"exit_code": %d, "ended_at": "%s"}\n' "$code" "$(now)" > "$run_dir/.exit.json.tmp"
mv "$run_dir/.exit.json.tmp" "$run_dir/exit.json"
echo "[launch] $(now) trainer exited with code $code" >> "$log"
exit "$code"
