"""`fab compare RUN_A RUN_B`: two runs' paired difference on their shared test actors, wherever the runs are.

    folder = find_run(c, inv, "lr-0.001", "results", say)   # a local folder holding the run's test predictions
    result = compare(c, inv, "base", "wider", "results", "results", say, console)   # trainer/results/compare.py's result

A run is looked for, in this order, and its first copy that holds test predictions is compared:

  1. a folder of that path on this machine (results/gpu1/base, or any run folder);
  2. a fetched copy, DEST/<host>/<run> (`fab fetch-results`); the newest when several hosts' copies are there;
  3. run storage (storage.url): the stored run downloaded into DEST/<its host>/<run>, as `fab fetch-results --run`;
  4. a host that holds it: -H (or the last deployed host) first, then the inventory's hosts; only the files the
     comparison reads come over (its test predictions, a cross-validation's plan and its folds' predictions).

The comparison itself is the trainer's (trainer/results/compare.py, as `python -m trainer compare`): nothing here
computes a score.
"""

from pathlib import Path

from paramiko.ssh_exception import SSHException

from deploy.errors import DeployError, HostUnreachable, LocalInputError
from deploy.host import training
from deploy.host.connection import connect, connect_host, rsync_target
from deploy.host.observe import refuse_special_entries
from deploy.host.quoting import rjoin
from deploy.host.sync import RUN_FILES_ONLY, rsync
from deploy.runs import storage
from trainer.errors import UserError
from trainer.run_format import run_format

# what the comparison reads of a run (trainer/results/compare.py load_run), and its headline for the user
NEEDED = [f"--include=/{run_format.TEST_PREDICTIONS}", f"--include=/{run_format.CV_PLAN}", f"--include=/{run_format.METRICS}",
          f"--include=/{run_format.CV}", "--include=/fold-*/", f"--include=/fold-*/{run_format.TEST_PREDICTIONS}", "--exclude=*"]


UNASKED = "could not be reached"


def holds_predictions(folder):
    folder = Path(folder)
    return (folder / run_format.TEST_PREDICTIONS).is_file() or (folder / run_format.CV_PLAN).is_file()


def find_run(c, inv, run, dest, say):
    """A local folder holding `run`'s test predictions (see the module docstring); LocalInputError naming where it
    looked when none does."""
    if Path(run).is_dir() and (holds_predictions(run) or (Path(run) / run_format.METRICS).is_file()):
        return Path(run)  # a run folder on this machine (a folder that is not one, e.g. configs/, is a run's name)
    training.valid_run_name(run, "RUN")
    looked = []
    fetched = sorted((p for p in Path(dest).glob(f"*/{run}") if holds_predictions(p)), key=lambda p: p.stat().st_mtime)
    if fetched:
        say(f"{run}: the copy fetched in {fetched[-1]}" + (f" (the newest of {len(fetched)})" if len(fetched) > 1 else ""))
        return fetched[-1]
    looked.append(f"no fetched copy in {Path(dest).resolve()}/<host>/{run}")
    if storage.enabled(inv):
        found = from_storage(inv, run, dest, say)
        if found is not None:
            return found
        looked.append(f"not in run storage {inv.storage['url']} (or stored without test predictions)")
    found = from_hosts(c, inv, run, dest, say, looked)
    if found is not None:
        return found
    error = HostUnreachable if any(UNASKED in place for place in looked) else LocalInputError  # a host that may hold it: 6
    raise error(f"Run {run} was not found with test predictions: {'; '.join(looked)}. A run keeps them once it "
                "has finished with a test split (RUN/test_predictions.json).")


def from_storage(inv, run, dest, say):
    """The stored run downloaded into DEST/<host>/<run> when storage has it finished; None when it has not."""
    store = storage.open_store(inv)
    from trainer.storage.s3 import StorageError

    try:
        pointer = store.pointer(run)
    except (StorageError, ValueError):
        return None
    if pointer is None or pointer.get("state") != "finished":
        return None
    local, _ = storage.fetch_run(inv, run, dest, say)
    return local if holds_predictions(local) else None


def from_hosts(c, inv, run, dest, say, looked):
    """The run's needed files brought from the first host that holds it into DEST/<host>/<run>; None when none does."""
    targets = []
    try:
        targets.append(connect(c, inv))
    except LocalInputError:
        pass
    named = {t.host_name for t in targets}
    targets += [None if name in named else name for name in inv.hosts]
    for target in targets:
        if target is None:
            continue
        local = from_host(c, inv, target, run, dest, say, looked)
        if local is not None:
            return local
    return None


def from_host(c, inv, target, run, dest, say, looked):
    """The run's files from one host (a name: connected here), or None with what it found added to `looked` (a host
    that cannot be reached is named there, and the next host is asked)."""
    label = target if isinstance(target, str) else target.label
    try:
        if isinstance(target, str):
            target = connect_host(c.config, inv, target)
        try:
            local = fetch_needed(target, inv.for_host(target.host_name) if target.host_name else inv, run, dest, say)
        finally:
            target.conn.close()
    except (DeployError, OSError, EOFError, SSHException) as e:  # not answering: named, and the next host asked
        looked.append(f"{label} {UNASKED}: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}")
        say(f"{looked[-1]}; asking the next place")
        return None
    if local is None:
        looked.append(f"{label} holds no finished run {run}")
    return local


def fetch_needed(target, inv, run, dest, say):
    """DEST/<host>/<run> with the files the comparison reads, rsynced from the host; None when it holds no finished run."""
    try:
        info = training.run_state(target.conn, inv, run=run, log_lines=0, quick=True)
    except OSError as e:  # unreachable: the next place is asked
        raise DeployError(f"cannot be reached ({type(e).__name__}: {e})") from None
    if not info.get("run_dir") or info.get("state") != "finished":
        return None
    remote = rjoin(inv.remote["runs_dir"], run)
    refuse_special_entries(target.conn, remote, run)
    root = Path(dest).resolve()
    local = root / storage.safe_name(target.label) / run
    local.mkdir(parents=True, exist_ok=True)
    rsync(target.conn, [*RUN_FILES_ONLY, *NEEDED, rsync_target(target.conn, remote) + "/", f"{local}/"])
    say(f"{run}: its test predictions fetched from {target.label} ({remote}) into {local}")
    return local if holds_predictions(local) else None


def compare(c, inv, run_a, run_b, dest, out, say, console):
    """Both runs found (find_run), compared, printed and written to OUT (compare-A-vs-B.json and .png); the result.
    A refusal (different test clips, missing or malformed predictions) is a LocalInputError naming the run and why."""
    from trainer.results.compare import compare_runs, print_comparison, write_comparison

    folders = [find_run(c, inv, run, dest, say) for run in (run_a, run_b)]
    try:
        result = compare_runs(*folders)
        print_comparison(result, console)
        json_path, png_path = write_comparison(result, out)
    except UserError as e:
        raise LocalInputError(f"compare {run_a} {run_b}: {e}") from None
    say(f"Wrote {json_path} and {png_path} (per-class recall of both runs, and the difference)")
    return result
