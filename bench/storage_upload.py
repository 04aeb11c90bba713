"""What run storage costs the training: the time an epoch's upload adds, and the upload lag.

    python bench/storage_upload.py [--clips 600] [--epochs 6] [--rounds 2]

Trains the same run (synthetic clips, model.units 64) through remote_scripts/launch_training.sh,
alternately without and with storage (the uploader beside the trainer, moto's S3 on 127.0.0.1 as
the store), `--rounds` times each. A watcher reads status.json every 20 ms: each epoch's seconds
as the trainer measures them (last_epoch_seconds: training, validation and every callback's
writes) and when the epoch's status was written; the uploader's storage.json says when each
checkpoint was stored and how much CPU time the uploader has used. Printed: the mean epoch time
without and with storage and their difference (target: none measurable, i.e. within the spread of
the runs), the upload lag (from an epoch's status.json to the pointer naming it or a later epoch:
median and max), the bytes a checkpoint sent, and the uploader's CPU time (the most it could take
from the trainer, on a machine whose cores are all busy). Loopback S3: the lag here is the uploader's own work; on a real link add the
bytes over the bandwidth.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer.run_format import run_format  # noqa: E402 - the run's file names


def watch(run_dir, stop, seen):
    """Record, per epoch, its seconds and when status.json first said it; and every storage.json checkpoint."""
    last = None
    while not stop.is_set():
        try:
            path = run_dir / run_format.STATUS
            mtime = path.stat().st_mtime
            status = json.loads(path.read_text())
            if status.get("epoch") and status["epoch"] != last and status.get("state") == "running":
                last = status["epoch"]
                seen["epochs"][last] = {"seconds": status.get("last_epoch_seconds"), "at": mtime}
        except (OSError, ValueError):
            pass
        try:
            record = json.loads((run_dir / run_format.STORAGE).read_text())
            seen["cpu_seconds"] = record.get("cpu_seconds")
            stored = record.get("stored") or {}
            if stored.get("epoch") is not None and stored.get("at_epoch_seconds") not in {s["at"] for s in seen["stored"]}:
                seen["stored"].append({"epoch": stored["epoch"], "at": stored["at_epoch_seconds"], "bytes": stored.get("bytes"),
                                       "seconds": stored.get("seconds")})
        except (OSError, ValueError):
            pass
        time.sleep(0.02)


def train(work, name, data, config, storage_env):
    run_dir = work / "runs" / name
    seen = {"epochs": {}, "stored": []}
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(run_dir, stop, seen), daemon=True)
    watcher.start()
    env = {**os.environ, **storage_env}
    if not storage_env:
        env.pop("FACENET_STORAGE", None)
    out = subprocess.run(["bash", str(ROOT / "remote_scripts" / "launch_training.sh"), sys.prefix, str(ROOT), str(run_dir),
                          "train", "--config", str(config), "--data", str(data), "--out", str(work / "runs"), "--run-name", name],
                         env=env)
    if out.returncode != 0:
        sys.exit(f"training {name} failed ({out.returncode}): see {run_dir / run_format.LOG}")
    if storage_env:  # the uploader stores the end after the trainer: wait for it
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (json.loads((run_dir / run_format.STORAGE).read_text()).get("done")):
            time.sleep(0.1)
    time.sleep(0.2)
    stop.set()
    watcher.join()
    return seen


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=600)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    import boto3
    import yaml
    from moto.server import ThreadedMotoServer

    from deploy.demo.localhost import free_port
    from trainer.data.synth import write_corpus

    work = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    data = work / "data" / "crema-d"
    write_corpus(data, "crema-d", clips=args.clips, seed=5)
    config = work / run_format.CONFIG
    config.write_text(yaml.safe_dump({"data": {"max_frames": 120}, "model": {"units": 64, "head_units": 64},
                                      "train": {"batch_size": 32, "epochs": args.epochs, "patience": 100, "lr_patience": 100,
                                                "workers": 1}}))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    keys = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in keys.items() if k != "AWS_DEFAULT_REGION"},
                 region_name="us-east-1").create_bucket(Bucket="bench")
    storage_env = {**keys, "FACENET_STORAGE": json.dumps({"url": "s3://bench/runs", "endpoint_url": endpoint, "host": "bench"})}
    without, with_storage, lags, sent, cpu = [], [], [], [], []
    try:
        for r in range(args.rounds):
            for label, env in (("off", {}), ("on", storage_env)):
                seen = train(work, f"r{r}-{label}", data, config, env)
                seconds = [e["seconds"] for k, e in sorted(seen["epochs"].items()) if k > 1 and e["seconds"]]  # epoch 1 builds the graph
                (with_storage if env else without).extend(seconds)
                print(f"round {r + 1}, storage {label}: epochs 2-{args.epochs}: {', '.join(f'{s:.2f}' for s in seconds)} s", flush=True)
                for epoch, e in seen["epochs"].items():
                    after = [s for s in seen["stored"] if s["epoch"] >= epoch and s["at"] >= e["at"]]
                    if after:
                        lags.append(min(s["at"] for s in after) - e["at"])
                sent += [s["bytes"] for s in seen["stored"] if s["bytes"]]
                if env and seen.get("cpu_seconds") is not None:
                    cpu.append((seen["cpu_seconds"], len(seen["stored"]), sum(e["seconds"] or 0 for e in seen["epochs"].values())))
    finally:
        server.stop()
    mean = lambda xs: statistics.fmean(xs) if xs else float("nan")  # noqa: E731
    spread = lambda xs: statistics.stdev(xs) if len(xs) > 1 else float("nan")  # noqa: E731
    print(f"epoch seconds without storage: mean {mean(without):.3f} (stdev {spread(without):.3f}, n={len(without)})")
    print(f"epoch seconds with storage:    mean {mean(with_storage):.3f} (stdev {spread(with_storage):.3f}, n={len(with_storage)})")
    print(f"added by storage: {mean(with_storage) - mean(without):+.3f} s per epoch "
          f"({(mean(with_storage) / mean(without) - 1) * 100:+.1f} %)")
    if lags:
        print(f"upload lag (an epoch's status.json to the pointer naming it or a later epoch): median {statistics.median(lags):.2f} s, "
              f"max {max(lags):.2f} s, n={len(lags)}")
    if sent:
        print(f"bytes a checkpoint sent: median {statistics.median(sent) / 1e6:.2f} MB, max {max(sent) / 1e6:.2f} MB")
    for seconds, checkpoints, training in cpu:  # what the uploader could take from the trainer at most: its own CPU time
        print(f"uploader CPU time: {seconds:.2f} s for {checkpoints} checkpoints ({seconds / max(checkpoints, 1):.3f} s each, "
              f"imports included), {seconds / training * 100:.1f} % of the run's {training:.0f} s of epochs")


if __name__ == "__main__":
    main()
