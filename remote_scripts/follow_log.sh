#!/usr/bin/env bash
# Streams a run's train.log (control characters made visible: trainer/results/visible.py) until the run ends (no process of it lives; see run_state.py alive):
#
#   follow_log.sh RUN_DIR SESSION [LINES] [raw]     (raw: with TensorFlow's C++ log lines, which run_state.py quiet drops)
set -euo pipefail
run_dir="$1" session="$2" lines="${3:-20}" raw="${4:-}"
here="$(cd "$(dirname "$0")" && pwd)"
# control characters in the log (an ESC sequence) are shown, never obeyed by the terminal
if [ "$raw" = raw ]; then
  tail -n "$lines" -F "$run_dir/train.log" 2>/dev/null > >(python3 "$here/../trainer/results/visible.py") &
else
  tail -n "$lines" -F "$run_dir/train.log" 2>/dev/null > >(python3 "$here/run_state.py" quiet | python3 "$here/../trainer/results/visible.py") &
fi
tail_pid=$!
trap 'kill "$tail_pid" 2>/dev/null || true' EXIT
alive() {  # a run launched before launch.json held a process group: while its tmux session lives (host_files.alive_without_group's rule)
  python3 "$here/run_state.py" alive "$run_dir" || { [ ! -e "$run_dir/exit.json" ] && tmux has-session -t "=$session" 2>/dev/null; }
}
while alive; do
  sleep 1
done
sleep 1  # let tail print the last lines
