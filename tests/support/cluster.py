"""Trainer processes on 127.0.0.1 as a MultiWorkerMirroredStrategy cluster (tests/trainer: multi-worker, loop)."""

import json
import os
import socket
import subprocess
import time

from tests.support.helpers import ROOT
from tests.support.warm_runner import start_trainer

# No pictures unless a test asks for them (`--set train.pictures=true` after these): drawing them is a third of a tiny run.
TINY = ["--set", "model.units=8", "--set", "model.head_units=8", "--set", "train.batch_size=16",
        "--set", "data.max_frames=40", "--set", "train.workers=1", "--set", "train.patience=100", "--set", "train.lr_patience=100",
        "--set", "train.pictures=false"]


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Cluster:
    """Two trainer processes, worker k training into tmp/wk/RUN."""

    def __init__(self, root, workers=2):
        self.root = root
        self.addresses = [f"127.0.0.1:{p}" for p in free_ports(workers)]
        self.procs, self.outputs = [], []

    def run_dir(self, k, name="run"):
        return self.root / f"w{k}" / name

    def env(self, k, extra=None):
        spec = {"cluster": {"worker": self.addresses}, "task": {"type": "worker", "index": k}}
        return {**os.environ, **(extra or {}), "TF_CONFIG": json.dumps(spec)}

    def start(self, *args, data=None, env=None):
        self.procs = []
        for k in range(len(self.addresses)):
            where = ["--resume", str(self.run_dir(k))] if "--resume" in args else ["--out", str(self.root / f"w{k}"), "--run-name", "run"]
            rest = [a for a in args if a != "--resume"]
            args_k = ["train", *where, *TINY, *rest] + (["--data", data[k]] if data is not None else [])  # the test's own --set wins
            self.procs.append(start_trainer(args_k, cwd=ROOT, env=self.env(k, env)))
        return self.procs

    def wait(self, timeout=300):
        self.outputs = []
        for p in self.procs:  # kept as each is read: report() after a timeout shows what was
            self.outputs.append(p.communicate(timeout=timeout)[0])
        return [p.returncode for p in self.procs], self.outputs

    def status(self, k):
        return json.loads((self.run_dir(k) / "status.json").read_text())

    def wait_for_epoch(self, epoch, timeout=180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.status(0)["epoch"] >= epoch:
                    return
            except (OSError, ValueError):
                pass
            if any(p.poll() is not None for p in self.procs):
                raise AssertionError(f"a worker ended before epoch {epoch}:\n{self.report()}")
            time.sleep(0.2)
        raise AssertionError(f"epoch {epoch} not reached in {timeout} s:\n{self.report()}")

    def report(self):
        """Each worker's exit code, status.json and last lines, the workers still running killed first
        (so that reading their output cannot block)."""
        self.kill()
        parts = []
        for k, p in enumerate(self.procs):
            try:
                out = p.communicate(timeout=10)[0] if not p.stdout.closed else self.outputs[k] if k < len(self.outputs) else "(not kept)"
            except subprocess.TimeoutExpired:
                out = "(not read: a process it started still holds its output open)"
            try:
                status = {key: self.status(k).get(key) for key in ("state", "epoch", "error")}
            except (OSError, ValueError) as e:
                status = f"({e})"
            parts.append(f"--- worker {k}: exit {p.returncode}; status.json: {status}\n{out[-3000:]}")
        return "\n".join(parts)

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()

