#!/usr/bin/env bash
# What `fab monitor` shows, for someone logged into the host:
#
#   monitor_training.sh [--run NAME] [--follow]
#
# Settings (venv, runs dir, tmux session) come from ../.deploy.env, written by `fab sync-code`.
# Exit code: 0 running or finished, 1 failed, 3 stopped, 4 vanished, 5 no run, 7 preempted, 8 stalled, 11 superseded
# (run_state.py's EXIT_CODES).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -f "$here/../.deploy.env" ]; then
  # shellcheck source=/dev/null
  source "$here/../.deploy.env"
fi
RUNS_DIR="${RUNS_DIR:-$HOME/facenet-runs}"
SESSION="${SESSION:-facenet-training}"

run=() follow=0
while [ "$#" -gt 0 ]; do
  case "$1" in
    --run) run=(--run "$2"); shift 2 ;;
    --follow) follow=1; shift ;;
    *) echo "usage: $0 [--run NAME] [--follow]" >&2; exit 2 ;;
  esac
done

if [ "$follow" = 1 ]; then
  name="${run[1]:-$(cat "$RUNS_DIR/.current" 2>/dev/null || true)}"
  if [ -n "$name" ]; then
    "$here/follow_log.sh" "$RUNS_DIR/$name" "$SESSION" 20 || true
  fi
fi
state="$(python3 "$here/run_state.py" --runs-dir "$RUNS_DIR" --session "$SESSION" "${run[@]}" --json || true)"
venv="${VENV:-$HOME/facenet-venv}"
if [ -x "$venv/bin/python" ]; then
  # the same screen as `fab monitor` (trainer/results/run_view.py); its exit code is the run state's
  cd "$here/.." && printf '%s\n' "$state" | "$venv/bin/python" -m trainer.results.run_view
else
  echo "No venv at $venv yet (run \`fab provision\`); the run state as JSON:"
  printf '%s\n' "$state"
  printf '%s\n' "$state" | python3 -c 'import json, sys; sys.exit(json.load(sys.stdin)["exit_code"])'
fi
