"""Deploy latency benchmark against the local SSH host: the cost of doing nothing, and of looking.

    python bench/deploy_latency.py [--clips 300] [--repeats 5]

After a first `fab deploy-full` (synthetic data, configs/demo.yaml) to a throwaway sshd on
127.0.0.1, it measures, as a user runs them:
1. `fab provision sync-code sync-data` with nothing changed: wall time, SSH connections and
   remote commands (counted from sshd's own log: "Accepted publickey", "Starting session");
2. `fab monitor` while the run trains: wall time, SSH connections and remote commands.
(1) runs after `fab stop`: tasks that change the host refuse while a training runs.
Targets: (1) under 5 s together; (2) under 1.5 s over a single SSH connection.
rsync opens its own SSH connection per transfer, which the counts include.
"""

import argparse
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy.inventory import REPO_ROOT  # noqa: E402
from deploy.localhost import LocalSSHHost, free_port, seed_venv  # noqa: E402
from trainer.synth import write_corpus  # noqa: E402

FAB = Path(sys.executable).parent / "fab"


def measure(host, env, args, repeats):
    """Median wall time of `fab ARGS`, and the SSH connections and commands of one run."""
    times, counts = [], None
    for _ in range(repeats):
        before = host.log_text()
        t0 = time.perf_counter()
        proc = subprocess.run([str(FAB), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
        if proc.returncode not in (0,):
            raise SystemExit(f"fab {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        time.sleep(0.3)  # let sshd flush its log
        new = host.log_text()[len(before):]
        counts = (new.count("Accepted publickey"), new.count("Starting session"))
    return statistics.median(times), min(times), counts


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=300)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, LocalSSHHost(Path(tmp) / "ssh") as host:
        tmp = Path(tmp)
        data = tmp / "data" / "crema-d"
        write_corpus(data, "crema-d", clips=args.clips, seed=0)
        venv = seed_venv(tmp / "host" / "venv", sysconfig.get_paths()["purelib"])
        session = f"bench-{os.getpid()}"
        inventory = {
            "default_host": "bench", "hosts": {"bench": host.host_entry()},
            "remote": {"project_dir": str(tmp / "host" / "project"), "venv": str(venv), "data_dir": str(tmp / "host" / "data"),
                       "runs_dir": str(tmp / "host" / "runs")},
            "local_data": [str(data)], "train_config": "configs/demo.yaml", "tmux_session": session,
            "tensorboard": {"session": f"{session}-tb", "remote_port": free_port(), "local_port": free_port()},
            "apt_packages": ["tmux", "rsync"], "pip": {"extra_args": ["--no-index"]},
        }
        (tmp / "inventory.yaml").write_text(yaml.safe_dump(inventory))
        env = {**os.environ, "FACENET_INVENTORY": str(tmp / "inventory.yaml"), "FACENET_STATE_DIR": str(tmp / "state")}
        t0 = time.perf_counter()
        first = subprocess.run([str(FAB), "deploy-full"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        if first.returncode != 0:
            raise SystemExit(f"first deploy-full failed:\n{first.stdout}{first.stderr}")
        print(f"first deploy-full ({args.clips} clips, {sum(f.stat().st_size for f in data.iterdir()) / 1e6:.0f} MB): "
              f"{time.perf_counter() - t0:.1f} s")
        try:
            mon = measure(host, env, ["monitor"], args.repeats)  # while the run trains
        finally:
            subprocess.run([str(FAB), "stop", "--wait", "5"], cwd=REPO_ROOT, env=env, capture_output=True)
        noop = measure(host, env, ["provision", "sync-code", "sync-data"], args.repeats)  # these refuse under a training
    print(f"\n{'command':<40}{'median s':>10}{'min s':>8}{'SSH conns':>11}{'commands':>10}   target")
    print(f"{'fab provision sync-code sync-data':<40}{noop[0]:>10.2f}{noop[1]:>8.2f}{noop[2][0]:>11}{noop[2][1]:>10}   < 5 s")
    print(f"{'fab monitor':<40}{mon[0]:>10.2f}{mon[1]:>8.2f}{mon[2][0]:>11}{mon[2][1]:>10}   < 1.5 s, 1 connection")
    ok = noop[0] < 5 and mon[0] < 1.5 and mon[2][0] == 1
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
