"""Throughput of one training on 1 device, 2 mirrored devices and 2 workers, on the same data.

    python bench/scaling.py [--data DIR] [--clips 600] [--epochs 4] [--steps-per-execution 1]

Runs `python -m trainer train` three times (train.batch_size 16 per replica, so the 2-replica runs
have a global batch of 32 and the 1-device run is given 32 too): one device; MirroredStrategy over
2 logical devices (FACENET_LOGICAL_CPUS=2 on a CPU machine; on a GPU machine with 2 GPUs, the GPUs); and 2
workers on 127.0.0.1 with TF_CONFIG. It prints the devices each run actually used (status.json's
distribution, environment.json's GPUs: on a one-GPU host the "mirrored" run is one replica, and the
bench says so), the replicas, the global batch, the last epoch's training seconds (its validation
left out: status.json's last_epoch_train_seconds) and training samples/s, in all and per replica
(per GPU on a GPU machine), from each run's status.json and metrics.json, the scaling efficiency (N-replica samples/s
over N x the one-device samples/s, on the same global batch), and whether the two workers ended
with identical weights. On a CPU machine the devices share the same cores: the figures show
the cost of the distribution machinery, not a speed-up.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer.run_format import run_format  # noqa: E402 - the run's file names

SETTINGS = ["--set", "model.units=32", "--set", "model.head_units=32", "--set", "data.max_frames=120",
            "--set", "train.patience=100", "--set", "train.workers=2"]


def trainer(args, env=None):
    return subprocess.Popen([sys.executable, "-m", "trainer", *map(str, args)], cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(procs):
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            sys.exit(f"trainer failed ({p.returncode}):\n{err[-3000:]}")


def figures(run_dir):
    status = json.loads((run_dir / run_format.STATUS).read_text())
    train = json.loads((run_dir / run_format.METRICS).read_text())["split_samples"]["train"] if (run_dir / run_format.METRICS).exists() else None
    return status, train


def devices_used(run_dir, status):
    """The devices a run trained on: its replicas' devices, and the host's GPUs (environment.json)."""
    env = json.loads((run_dir / "environment.json").read_text()) if (run_dir / "environment.json").exists() else {}
    devices = [d.replace("/job:localhost/replica:0/task:0/", "").replace("/job:worker/replica:0/", "worker ").lstrip("/")
               if d != "default" else "default device" for d in status["distribution"]["devices"]]
    where = " (the chief's; each worker has as many)" if status["distribution"].get("workers") else ""
    return f"{', '.join(devices)}{where}; host GPUs: {', '.join(env.get('gpus') or []) or 'none'}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="a feature folder (default: synthetic CREMA-D clips)")
    ap.add_argument("--clips", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps-per-execution", type=int, default=1, help="train.steps_per_execution of every run")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="facenet-scaling-"))
    data = a.data
    if data is None:
        data = tmp / "data"
        finish([trainer(["synth", "--out", data, "--clips", a.clips, "--seed", 1])])
    common = ["train", "--data", data, "--epochs", a.epochs, *SETTINGS, "--set", f"train.steps_per_execution={a.steps_per_execution}"]
    rows = []
    finish([trainer([*common, "--out", tmp, "--run-name", "one", "--set", "train.distribute=off", "--set", "train.batch_size=32"])])
    rows.append(("1 device", tmp / "one"))
    finish([trainer([*common, "--out", tmp, "--run-name", "mirrored", "--set", "train.distribute=mirrored", "--set", "train.batch_size=16"],
                    env={"FACENET_LOGICAL_CPUS": "2"})])
    rows.append(("2 mirrored devices", tmp / "mirrored"))
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    workers = [f"127.0.0.1:{p}" for p in ports]
    procs = [trainer([*common, "--out", tmp / f"w{k}", "--run-name", "multi", "--set", "train.batch_size=16"],
                     env={"TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": k}})})
             for k in range(2)]
    finish(procs)
    rows.append(("2 workers (loopback)", tmp / "w0" / "multi"))
    print(f"{'setup':<22} {'replicas':>8} {'global batch':>12} {'train s':>8} {'samples/s':>10} {'per replica':>12} "
          f"{'efficiency':>11}  devices")
    one = None
    for name, run in rows:
        status, train = figures(run)
        seconds, replicas = status["last_epoch_train_seconds"], status["distribution"]["replicas"]
        rate = train / seconds
        one = one or rate  # the first row: one device
        print(f"{name:<22} {replicas:>8} {status['distribution']['global_batch_size']:>12} {seconds:>8.2f} "
              f"{rate:>10.0f} {rate / replicas:>12.0f} {rate / (replicas * one):>11.2f}  {devices_used(run, status)}")
        if name != "1 device" and replicas < 2:
            print(f"  note: {name} ran on {replicas} replica(s), not 2: not a scaling figure")
    same = json.loads((tmp / "w0" / "multi" / run_format.STATUS).read_text())["weights_sha256"] == \
        json.loads((tmp / "w1" / "multi" / run_format.STATUS).read_text())["weights_sha256"]
    print(f"2 workers ended with identical weights: {same}")
    print(f"runs in {tmp}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
