"""`make demo`: the whole product on built-in defaults, with no GPU host and no real data.

    python -m deploy.demo [--clips 600] [--epochs N] [--keep-host]

1. writes synthetic CREMA-D feature files (`python -m trainer synth`) to .facenet/demo/data/,
2. starts a throwaway OpenSSH server on 127.0.0.1 (keys under .facenet/demo/ssh/) standing in
   for the GPU host, whose "remote" paths live under .facenet/demo/host/,
3. runs the real `fab deploy-full` against it (configs/demo.yaml: a short CPU training),
4. `fab monitor --follow` until the run ends, then `fab fetch-results`, which prints the metrics,
5. the training's time against the smoke test's estimate of it (the estimate in the smoke test's JSON
   result on the host, the time in the fetched run's status.json: compute_seconds),
6. and, also on failure or Ctrl-C, ends everything it started: the SSH server, the tmux sessions,
   the host agent, TensorBoard and any trainer (deploy.demo.localhost.end_host_processes).

Its files are under .facenet/demo/ ($FACENET_DEMO_DIR if set). The host agent's EC2 metadata probe
is off (`ec2.metadata_url: null`): nothing leaves 127.0.0.1.

The host's venv sees this checkout's .venv packages (see deploy.demo.localhost.seed_venv), so the
demo does not download TensorFlow a second time; everything else is the real code path.
"""

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import yaml

from deploy.demo.localhost import LocalSSHHost, end_host_processes, free_port, seed_venv
from deploy.host.checks import SMOKE_STEP
from deploy.host.provision import result_path
from deploy.paths import REPO_ROOT
from trainer.run_format import run_format

DEMO = Path(os.environ.get("FACENET_DEMO_DIR") or REPO_ROOT / ".facenet" / "demo")
FAB = Path(sys.executable).parent / "fab"


def fab(env, *args):
    print(f"\n$ fab {' '.join(args)}", flush=True)
    return subprocess.run([str(FAB), *args], cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL).returncode


def demo_inventory(host_root, venv, data, epochs):
    """The demo's inventory.yaml (its host added once the local SSH host runs): a host in DEMO/host, no downloads."""
    return {
        "default_host": "demo-host",
        "remote": {"project_dir": str(host_root / "project"), "venv": str(venv),
                   "data_dir": str(host_root / "data"), "runs_dir": str(host_root / "runs")},
        "local_data": [str(data)],
        "train_config": demo_config(epochs),
        "tmux_session": "facenet-demo",
        "tensorboard": {"session": "facenet-demo-tensorboard", "remote_port": free_port(), "local_port": 6006},
        "apt_packages": ["tmux", "rsync"],
        "pip": {"extra_args": ["--no-index"]},  # the demo host reuses this checkout's packages: no downloads
        "ec2": {"metadata_url": None},  # not an EC2 instance: the host agent never probes 169.254.169.254
    }


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m deploy.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=600, help="synthetic clips to generate (first run only)")
    p.add_argument("--keep-host", action="store_true", help="leave the local SSH host running until Enter is pressed")
    p.add_argument("--epochs", type=int, help="epochs of the demo's training (default: configs/demo.yaml's)")
    args = p.parse_args(argv)

    data = DEMO / "data" / "crema-d"
    if not data.is_dir():
        from trainer.data.synth import write_corpus

        t0 = time.monotonic()
        write_corpus(data, "crema-d", clips=args.clips, seed=0)
        print(f"Wrote {args.clips} synthetic CREMA-D clips to {data} in {time.monotonic() - t0:.1f} s")
    host_root = DEMO / "host"
    venv = seed_venv(host_root / "venv", sysconfig.get_paths()["purelib"])
    inventory = demo_inventory(host_root, venv, data, args.epochs)
    sessions = [inventory["tmux_session"], inventory["tensorboard"]["session"]]
    try:
        with LocalSSHHost(DEMO / "ssh") as host:
            print(f"Local SSH host: {host.user}@127.0.0.1:{host.port} (sshd log: {host.log_file})")
            inventory["hosts"] = {"demo-host": host.host_entry()}
            (DEMO / "inventory.yaml").write_text(yaml.safe_dump(inventory, sort_keys=False))
            env = {**os.environ, "FACENET_INVENTORY": str(DEMO / "inventory.yaml"), "FACENET_STATE_DIR": str(DEMO / "state")}
            run = time.strftime("demo-%Y%m%d-%H%M%S")
            if fab(env, "deploy-full", "--run-name", run) != 0:
                print("\nThe demo's deploy-full failed (above).", file=sys.stderr)
                return 1
            fab(env, "monitor", "--follow")
            code = fab(env, "fetch-results", "--run", run, "--dest", str(DEMO / "results"))
            fetched = DEMO / "results" / inventory["default_host"] / run
            print("\n" + training_time(Path(result_path(inventory["remote"], SMOKE_STEP)), fetched / run_format.STATUS))
            print(f"Demo done. Inventory: {DEMO / 'inventory.yaml'}; results: {DEMO / 'results'}")
            if args.keep_host:
                print(f"The local SSH host stays up; in another terminal:\n  export FACENET_INVENTORY={DEMO / 'inventory.yaml'} "
                      f"FACENET_STATE_DIR={DEMO / 'state'}\n  fab monitor; fab tensorboard-tunnel\nPress Enter to stop it.")
                input()
            return code
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return 130
    finally:
        ended = end_host_processes(host_root, sessions)
        if ended:
            print(f"Stopped what the demo host still ran: {', '.join(ended)}")


def training_time(smoke_result, status):
    """'Training time: estimated 54 s, took 58 s (+7 %) ...': the smoke test's estimate (its JSON result) against
    the trainer's time (the run's status.json compute_seconds), or what is missing."""
    def read(path):
        try:
            return json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None

    estimate = ((read(smoke_result) or {}).get("estimate") or {}).get("seconds")
    took = (read(status) or {}).get("compute_seconds")
    if estimate is None or took is None:
        missing = " and ".join(what for what, value in (("no estimate in " + str(smoke_result), estimate),
                                                        ("no compute_seconds in " + str(status), took)) if value is None)
        return f"Training time: not compared ({missing})."
    return (f"Training time: estimated {estimate:.0f} s, took {took:.0f} s ({(took - estimate) / estimate * 100:+.0f} %) "
            "(the smoke test's estimate; the trainer's time from its start to its end, status.json compute_seconds)")


def demo_config(epochs):
    """configs/demo.yaml, or a copy of it with `epochs` (in the demo's folder)."""
    if epochs is None:
        return "configs/demo.yaml"
    cfg = yaml.safe_load((REPO_ROOT / "configs" / "demo.yaml").read_text())
    cfg["train"]["epochs"] = epochs
    path = DEMO / f"demo-{epochs}-epochs.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
