"""Faults at seeded random times into a watched, stored run, over many seeds: a table of what held.

    python bench/random_faults.py [--seeds 10] [--first 1] [--faults 4] [--epochs 24]

Each seed runs tests/support/random_faults.py's scenario (hosts a and b on local sshd, run storage on moto's
S3 through a proxy that can stop answering, `fab deploy-full` then `fab watch`, `--faults` faults of
random kinds at random moments; a killed `fab watch` is started again, as a supervisor would). A row
per seed: ok or FAILED, the most trainers of the run alive at one sample, epochs trained by two
launches, billed trainer seconds (the time some trainer of the run lived, its start-ups and a stopped
trainer's pause included), useful seconds (epochs x the median of the epochs' own times), the scenario's
seconds, and the faults with their moments.
Every problem found is printed below the table. Exit 1 if any seed failed.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--first", type=int, default=1)
    p.add_argument("--faults", type=int, default=4)
    p.add_argument("--epochs", type=int, default=24)
    args = p.parse_args()

    from moto.server import ThreadedMotoServer

    from deploy.demo.localhost import free_port
    from tests.support.deploy_env import make_host_venv
    from tests.support.random_faults import run_scenario
    from tests.support.webhook import serve

    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_EC2_METADATA_DISABLED="true")
    for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL"):
        os.environ.pop(key, None)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    moto = f"http://{host}:{port}"
    rows, failed = [], []
    with tempfile.TemporaryDirectory(prefix="facenet-faults-") as tmp:
        venv = make_host_venv(Path(tmp) / "host venv")
        for seed in range(args.first, args.first + args.seeds):
            with serve() as webhook:
                report = run_scenario(seed, Path(tmp) / f"seed-{seed}", moto, venv, webhook, faults=args.faults, epochs=args.epochs,
                                      log=lambda line: print(line, file=sys.stderr, flush=True))
            rows.append(report.row())
            print(report.row(), file=sys.stderr, flush=True)
            if report.problems():
                failed.append((seed, report.problems(), report.watch_tail))
    server.stop()
    print(f"seed  result  max  twice  billed  useful  total  faults ({args.faults} a seed, {args.epochs} epochs; max: most trainers "
          "alive at once; twice: epochs trained by two launches; seconds)")
    print("\n".join(rows))
    for seed, problems, tail in failed:
        print(f"\nseed {seed}: " + "; ".join(problems) + "\n" + tail[-3000:])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
