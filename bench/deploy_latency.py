"""Deploy latency against a local SSH host, beside the raw floor measured in the same run.

    python bench/deploy_latency.py [--clips 300] [--repeats 7] [--repo PATH] [--compare OLD_CHECKOUT]

A throwaway sshd on 127.0.0.1 gets code, data (synthetic) and a finished one-epoch run
(`fab provision sync-code sync-data`, then `fab train`). Then, `--repeats` rounds, each side of
each pair once per round (the order rotates from round to round), as a user types them:

    no-op redeploy   `fab provision sync-code sync-data`   against the floor: `ssh host true`, then
                                                          rsync of the code folders, then rsync of the data
    monitor          `fab monitor`                         against `ssh host cat RUN/status.json`

It prints the medians, the median of the per-pair ratios (the ratio that counts), and the SSH
connections and remote commands of each (from sshd's own log: "Accepted publickey" per
connection, "Starting session" per command; rsync opens a connection of its own per transfer).
Targets: no-op redeploy <= 1.5x the floor, `fab monitor` <= 1.3x `ssh cat`; exit 1 if missed.
--repo: the checkout whose fabfile runs (default: this one). --compare OLD: another checkout (e.g.
`git archive COMMIT | tar -x -C /tmp/old`) measured in the same pairs, as a third side with its own
project folder on the host, so before and after share the machine's load; it sets no target.
"""

import argparse
import functools
import os
import shlex
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy.demo.localhost import LocalSSHHost, end_host_processes, free_port, seed_venv  # noqa: E402
from deploy.host.sync import CODE_PATHS  # noqa: E402
from deploy.paths import REPO_ROOT  # noqa: E402
from trainer.data.synth import write_corpus  # noqa: E402
from trainer.run_format import run_format  # noqa: E402

FAB = Path(sys.executable).parent / "fab"
TARGETS = {"redeploy": 1.5, "monitor": 1.3}
RUN = "bench"
TRAIN_CONFIG = {"data": {"max_frames": 40}, "model": {"units": 8, "head_units": 8},
                "train": {"batch_size": 16, "epochs": 1, "workers": 1}}


class Bench:
    """The host, the inventory's paths and the commands of each side."""

    def __init__(self, host, tmp, repo, clips, compare=None):
        self.host, self.tmp, self.repo, self.compare = host, tmp, repo, compare
        self.data = tmp / "data" / "crema-d"
        write_corpus(self.data, "crema-d", clips=clips, seed=0)
        self.remote = {"project_dir": str(tmp / "host" / "project"), "venv": str(seed_venv(tmp / "host" / "venv", sysconfig.get_paths()["purelib"])),
                       "data_dir": str(tmp / "host" / "data"), "runs_dir": str(tmp / "host" / "runs")}
        (tmp / "train.yaml").write_text(yaml.safe_dump(TRAIN_CONFIG))
        self.session = session = f"bench-{os.getpid()}"
        self.inventory = {
            "default_host": "bench", "hosts": {"bench": host.host_entry()}, "remote": self.remote,
            "local_data": [str(self.data)], "train_config": str(tmp / "train.yaml"), "tmux_session": session,
            "tensorboard": {"session": f"{session}-tb", "remote_port": free_port(), "local_port": free_port()},
            "apt_packages": ["tmux", "rsync"], "pip": {"extra_args": ["--no-index"]}, "ec2": {"metadata_url": None},
        }
        self.envs = {repo: self.env_for(repo, "inventory.yaml", self.remote["project_dir"])}
        if compare:  # its own code folder on the host: each side's sync-code stays a no-op
            self.envs[compare] = self.env_for(compare, "inventory-compare.yaml", str(tmp / "host" / "project-compare"))
        self.ssh = ["ssh", "-p", str(host.port), "-i", str(host.key_file), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
                    "-o", f"UserKnownHostsFile={tmp / 'floor_known_hosts'}"]
        self.login = f"{host.user}@127.0.0.1"

    def env_for(self, repo, name, project_dir):
        inventory = {**self.inventory, "remote": {**self.remote, "project_dir": project_dir}}
        (self.tmp / name).write_text(yaml.safe_dump(inventory))
        # bytecode cached, as on a laptop (some sandboxes set PYTHONDONTWRITEBYTECODE: every fab would compile this project)
        env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
        return {**env, "FACENET_INVENTORY": str(self.tmp / name), "FACENET_STATE_DIR": str(self.tmp / "state"), "PYTHONPATH": str(repo)}

    def fab(self, *args, check=True, repo=None):
        repo = repo or self.repo
        proc = subprocess.run([str(FAB), *args], cwd=repo, env=self.envs[repo], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise SystemExit(f"fab {' '.join(args)} ({repo}) failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc

    def floor_redeploy(self):
        """What a no-op redeploy cannot do without: one SSH login, and the two rsyncs with fab's filters."""
        run = lambda *cmd: subprocess.run(cmd, check=True, capture_output=True, stdin=subprocess.DEVNULL)  # noqa: E731
        rsync = ["rsync", "-a", "--protect-args", "-e", shlex.join(self.ssh)]
        code = ["--filter=P __pycache__/", "--exclude=__pycache__/", "--exclude=*.pyc",
                *(f"--include=/{p}***" if p.endswith("/") else f"--include=/{p}" for p in CODE_PATHS),
                "--exclude=*", "--delete", "--checksum"]
        run(*self.ssh, self.login, "true")
        run(*rsync, *code, f"{self.repo}/", f"{self.login}:{self.remote['project_dir']}/")
        run(*rsync, "--delete", "--copy-links", f"{self.data}/", f"{self.login}:{self.remote['data_dir']}/crema-d/")

    def floor_monitor(self):
        status = f"{self.remote['runs_dir']}/{RUN}/{run_format.STATUS}"
        subprocess.run([*self.ssh, self.login, "cat", shlex.quote(status)], check=True, capture_output=True, stdin=subprocess.DEVNULL)

    def timed(self, action):
        """(seconds, SSH connections, remote commands) of `action()`."""
        before = len(self.host.log_text())
        t0 = time.perf_counter()
        action()
        seconds = time.perf_counter() - t0
        time.sleep(0.3)  # sshd writes its log lines as sessions end
        new = self.host.log_text()[before:]
        return seconds, new.count("Accepted publickey"), new.count("Starting session")


def prepare(bench):
    t0 = time.perf_counter()
    bench.fab("provision", "sync-code", "sync-data")
    bench.fab("train", "--run-name", RUN)
    exit_json = Path(bench.remote["runs_dir"]) / RUN / run_format.EXIT
    deadline = time.monotonic() + 900
    while not exit_json.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"the bench's training did not end within 15 min; see {exit_json.parent / run_format.LOG}")
        time.sleep(2)
    for repo in bench.envs:
        bench.fab("provision", "sync-code", "sync-data", repo=repo)  # the other checkout's code folder, once
        code = bench.fab("monitor", check=False, repo=repo).returncode
        if code != 0:
            raise SystemExit(f"`fab monitor` ({repo}) exits {code} after the bench's training (expected 0: finished)")
    print(f"prepared: {len(list(bench.data.iterdir()))} clips, "
          f"{sum(f.stat().st_size for f in bench.data.iterdir()) / 1e6:.0f} MB, a finished run; {time.perf_counter() - t0:.0f} s")


def pairs(bench, repeats):
    """{task: {side: [(s, conns, cmds)]}} from `repeats` rounds; each round runs every side once, in a rotated order."""
    floors = {"redeploy": bench.floor_redeploy, "monitor": bench.floor_monitor}
    args = {"redeploy": ("provision", "sync-code", "sync-data"), "monitor": ("monitor",)}
    found = {name: {side: [] for side in ["floor", *bench.envs]} for name in floors}
    for i in range(repeats):
        for name, floor in floors.items():
            sides = [("floor", floor)] + [(repo, functools.partial(bench.fab, *args[name], repo=repo)) for repo in bench.envs]
            k = i % len(sides)
            for side, action in sides[k:] + sides[:k]:
                found[name][side].append(bench.timed(action))
    return found


def report(bench, found):
    labels = {"redeploy": ("fab provision sync-code sync-data", "ssh true + rsync code + rsync data"),
              "monitor": ("fab monitor", "ssh host cat RUN/status.json")}
    print(f"\n{'command':<48}{'median s':>9}{'min s':>8}{'SSH conns':>10}{'commands':>9}{'ratio':>7}")
    ok = True
    for name, (fab_label, floor_label) in labels.items():
        rows = found[name]
        for side in ["floor", *bench.envs]:
            times = [t for t, _, _ in rows[side]]
            conns, cmds = rows[side][-1][1:]
            label = floor_label if side == "floor" else fab_label + ("" if side == bench.repo else " (--compare)")
            ratio = "" if side == "floor" else f"{statistics.median(f[0] / g[0] for f, g in zip(rows[side], rows['floor'])):.2f}x"
            print(f"{label:<48}{statistics.median(times):>9.2f}{min(times):>8.2f}{conns:>10}{cmds:>9}{ratio:>7}")
        ratios = [f[0] / g[0] for f, g in zip(rows[bench.repo], rows["floor"])]
        ratio = statistics.median(ratios)
        ok &= ratio <= TARGETS[name]
        print(f"  {fab_label}: {ratio:.2f}x the floor (median of {len(ratios)} pairs: {', '.join(f'{r:.2f}' for r in ratios)}), "
              f"target <= {TARGETS[name]}x")
    print("targets met" if ok else "TARGETS MISSED")
    return ok


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=300)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--repo", type=Path, default=REPO_ROOT, help="the checkout whose fabfile runs (default: this one)")
    p.add_argument("--compare", type=Path, help="another checkout, measured in the same rounds (e.g. an older commit)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, LocalSSHHost(Path(tmp) / "ssh") as host:
        bench = Bench(host, Path(tmp), args.repo.resolve(), args.clips, args.compare.resolve() if args.compare else None)
        try:
            prepare(bench)
            found = pairs(bench, args.repeats)
        finally:
            end_host_processes(tmp, (bench.session, f"{bench.session}-tb"))
    return 0 if report(bench, found) else 1


if __name__ == "__main__":
    sys.exit(main())
