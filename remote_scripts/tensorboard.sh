#!/usr/bin/env bash
# Starts TensorBoard over the runs dir in its own tmux session, bound to 127.0.0.1 only
# (reach it through `fab tensorboard-tunnel`), unless it already runs; waits until it answers:
#
#   tensorboard.sh VENV RUNS_DIR SESSION PORT
#
# Exit 1, saying so, when another process holds the port: a tunnel to it would show something
# else than our TensorBoard.
set -euo pipefail
venv="$1" runs="$2" session="$3" port="$4"
log="$runs/.tensorboard.log"

answering() {
  python3 -c 'import sys, urllib.request; urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=2)' "$port" 2>/dev/null
}
port_taken() {
  python3 -c 'import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)' "$port"
}

if tmux has-session -t "=$session" 2>/dev/null && answering; then
  echo "TensorBoard already running on the host's 127.0.0.1:$port (tmux session $session)."
  exit 0
fi
if ! "$venv/bin/python" -c 'import tensorboard' 2>/dev/null; then
  echo "No TensorBoard in the venv $venv: run \`fab provision\`." >&2
  exit 1
fi
tmux kill-session -t "=$session" 2>/dev/null || true
if port_taken; then
  echo "Port $port on the host's 127.0.0.1 is in use by another process (not our TensorBoard): set tensorboard.remote_port in the inventory to a free port." >&2
  exit 1
fi
mkdir -p "$runs"
# shellcheck disable=SC2016  # the inner script expands its own arguments
tmux new-session -d -s "$session" bash -c 'exec "$0" -m tensorboard.main --logdir "$1" --host 127.0.0.1 --port "$2" >> "$3" 2>&1' \
  "$venv/bin/python" "$runs" "$port" "$log"
for ((i = 0; i < 90; i++)); do
  if answering; then
    echo "TensorBoard started on the host's 127.0.0.1:$port (tmux session $session)."
    exit 0
  fi
  if ! tmux has-session -t "=$session" 2>/dev/null; then
    echo "TensorBoard exited at start; last lines of $log:" >&2
    tail -n 20 "$log" >&2 || true
    exit 1
  fi
  sleep 1
done
echo "TensorBoard did not answer on 127.0.0.1:$port within 90s; last lines of $log:" >&2
tail -n 20 "$log" >&2 || true
exit 1
