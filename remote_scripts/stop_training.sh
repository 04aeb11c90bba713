#!/usr/bin/env bash
# Ends a training gracefully, then removes its tmux session; harmless when none runs:
#
#   stop_training.sh RUN_DIR SESSION WAIT_SECONDS
#
# SIGTERM to the launcher (launch.json's pid), which passes it to the trainer: it finishes
# the current epoch, saves its backup and exits 3 (stopped). If it has not ended after
# WAIT_SECONDS, its whole process group gets SIGTERM, then SIGKILL; the backup of the last
# finished epoch stays. Exit 1 if any process of the group survives (see run_state.py stop).
set -euo pipefail
exec python3 "$(dirname "$0")/run_state.py" stop "$@"
