"""A sweep's plan: the Cartesian product of `--set KEY=V1,V2` as runs NAME-<slug>, each with its config, kept on the laptop.

    sets = parse_sets(["train.learning_rate=0.001,0.0003", "model.units=64,128"])   # {key: [values]}
    runs = product_runs("lr", sets)      # [{"run": "lr-0.001-64", "values": {...}}, ...]: 4 runs
    record = load("lr") / save(record)   # STATE_DIR/sweeps/<name>/sweep.json, and a config per run beside it

Every run is the inventory's train_config with its values set (trainer/config.py load_config checks each key and type
here, before anything reaches a host). The split's seed is the same for every run (a --set of `seed` or `split.*` is
refused), so every run is tested on the same actors and `fab compare` can pair any two of them.
"""

import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import sys
from contextlib import contextmanager

import yaml

from deploy.errors import LocalInputError
from deploy.host.run_config import local_config
from deploy.paths import state_dir
from trainer.errors import ConfigError
from trainer.names import check_run_name
from trainer.run_format import run_format

SHARED = ("seed", "split.")  # what decides the test actors: the same for every run of a sweep
SLUG_MAX = 40


def parse_sets(items):
    """{key: [values]} of `--set KEY=V1,V2` items (values as YAML reads them: 0.001, 64, true, adamw); LocalInputError
    naming the item when it is not of that form."""
    sets = {}
    for item in items or []:
        key, sep, values = str(item).partition("=")
        key = key.strip()
        if not sep or not key or not values:
            raise LocalInputError(f"--set expects KEY=V1,V2,... (e.g. train.learning_rate=0.001,0.0003). Received: {item!r}")
        if key == "seed" or key.startswith("split."):
            raise LocalInputError(f"--set {key}: a sweep keeps one split for every run (the same test actors, so that runs "
                                  "compare paired); set it in the training config, for the whole sweep.")
        if key == "train.monitor":
            raise LocalInputError("--set train.monitor: a sweep ranks its runs by validation UAR; sweeping the metric that "
                                  "picks each run's best model would compare runs chosen by different rules. Set train.monitor "
                                  "in the training config, for the whole sweep.")
        if key in sets:
            raise LocalInputError(f"--set {key} is given twice; give its values once: --set {key}=V1,V2")
        parsed = [scalar(key, v) for v in values.split(",")]
        if len(set(map(json.dumps, parsed))) != len(parsed):
            raise LocalInputError(f"--set {item}: a value is given twice.")
        sets[key] = parsed
    return sets


def scalar(key, text):
    """One --set value read as YAML: a string, a whole number, a number or true/false; LocalInputError naming the --set."""
    expected = "values that are each a string, a number or true/false, comma-separated (e.g. --set train.optimizer=adam,sgd)"
    text = text.strip()
    if not text:
        raise LocalInputError(f"--set {key}: an empty value (two commas, or a comma at an end); {key} expects {expected}.")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise LocalInputError(f"--set {key}: {text!r} does not read as a value ({str(e).splitlines()[0]}); {key} expects "
                              f"{expected}.") from None
    if not isinstance(value, (str, int, float, bool)):
        raise LocalInputError(f"--set {key}: {text!r} reads as {type(value).__name__}, not a plain value; {key} expects "
                              f"{expected} (quote nothing: a list, a mapping or a date cannot be swept).")
    return value


def check_sweep_name(name):
    """The sweep's NAME: what its runs' names begin with (NAME-<values>); LocalInputError saying what is wrong."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise LocalInputError(f"The sweep NAME expects letters, digits, '.', '_' or '-', starting with a letter or digit (it "
                              f"begins its runs' names, NAME-<values>, which become folder names). Received: {name!r}")
    if len(name) > 60:
        raise LocalInputError(f"The sweep NAME is {len(name)} characters long; at most 60 (its runs' names, NAME-<values>, "
                              f"are at most 100). Received: {name!r}")
    return name


def slug(values):
    """'0.001-64': the values in order, anything but letters, digits, '.' and '_' dropped; long ones shortened with a hash."""
    text = "-".join(re.sub(r"[^A-Za-z0-9._]", "", str(v)) or "x" for v in values.values())
    if len(text) > SLUG_MAX:
        text = text[:SLUG_MAX - 9].rstrip("-.") + "-" + hashlib.sha256(json.dumps(values).encode()).hexdigest()[:8]
    return text


def product_runs(name, sets):
    """[{"run", "values"}] for every combination of the sets' values, in the order given."""
    keys = list(sets)
    runs = []
    for combo in itertools.product(*(sets[k] for k in keys)):
        values = dict(zip(keys, combo))
        run = f"{name}-{slug(values)}"
        if any(r["run"] == run for r in runs):  # two values that read alike once cleaned: numbered
            run = f"{run}-{len(runs) + 1}"
        runs.append({"run": check_name(run), "values": values})
    return runs


def check_name(run):
    try:
        return check_run_name(run, "the sweep's run name (NAME-<values>)")
    except Exception as e:  # noqa: BLE001 - trainer.errors.UserError: a name too long or of other characters
        raise LocalInputError(f"{e} Choose a shorter sweep NAME.") from None


def run_config(inv, name, run):
    """The run's config file on this machine (its values set in the inventory's train_config, every key checked)."""
    from trainer.config import load_config

    base = local_config(inv.train_config)
    if base is None:
        raise LocalInputError(f"Inventory key 'train_config' names {inv.train_config}, not a file on this machine: a sweep "
                              "sets its values in this machine's copy.")
    overrides = [f"{key}={json.dumps(value)}" for key, value in run["values"].items()]
    try:
        cfg = load_config(base, overrides=overrides)
    except ConfigError as e:
        raise LocalInputError(f"--set for run {run['run']}: {e}") from None
    path = folder(name) / f"{run['run']}.yaml"
    return cfg, path


@contextmanager
def held(name):
    """The sweep's state folder (STATE_DIR/sweeps/NAME) locked for this command's whole life (fcntl: the kernel releases
    it when the process dies); LocalInputError naming the holder when another `fab sweep NAME` holds it. A folder left
    without a record (a refused sweep) is removed on the way out."""
    path = folder(name)
    while True:
        path.mkdir(parents=True, exist_ok=True)
        f = open(path / ".lock", "a+")  # noqa: SIM115 - held until the end of the with block
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise LocalInputError(f"Sweep {name} is being run by another command ({holder}); one `fab sweep {name}` at a "
                                  f"time (its lock: {path / '.lock'}). Wait for it to end, or end it (Ctrl-C), then run "
                                  f"`fab sweep {name}` again.") from None
        if os.path.exists(path / ".lock") and os.fstat(f.fileno()).st_ino == os.stat(path / ".lock").st_ino:
            break
        f.close()  # the folder was removed meanwhile by the holder that just ended: lock the new one
    try:
        f.truncate(0)
        f.write(f"pid {os.getpid()}: {' '.join(['fab', *sys.argv[1:]])[:300]}\n")
        f.flush()
        yield path
    finally:
        if not (path / "sweep.json").exists():
            shutil.rmtree(path, ignore_errors=True)
        f.close()


def folder(name):
    return state_dir() / "sweeps" / name


def record_path(name):
    return state_dir() / "sweeps" / name / "sweep.json"


def load(name):
    """The sweep's record, or None when there is none."""
    try:
        return json.loads(record_path(name).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise LocalInputError(f"{record_path(name)} does not read as a sweep record ({e}); move it away to start over.") from None


def save(record):
    path = record_path(record["name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    run_format.write_json(path, record, mode=0o644)


def held_by_others(name, runs):
    """{run: other sweep} for the runs of `runs` that another sweep's record on this machine holds."""
    clash = {}
    for path in sorted((state_dir() / "sweeps").glob("*/sweep.json")):
        if path.parent.name == name:
            continue
        try:
            theirs = {r["run"] for r in json.loads(path.read_text())["runs"]}
        except (OSError, ValueError, KeyError, TypeError):
            continue
        clash.update({run: path.parent.name for run in runs if run in theirs and run not in clash})
    return clash


def new_record(inv, name, sets, folds, hosts):
    """The record of a new sweep, each run's config written beside it; LocalInputError when a --set does not fit."""
    runs = product_runs(name, sets)
    clash = held_by_others(name, [r["run"] for r in runs])
    if clash:
        raise LocalInputError(f"Sweep {name} would make run(s) that another sweep holds: "
                              + "; ".join(f"{run} (sweep {other}, {record_path(other)})" for run, other in clash.items())
                              + ". A run is one sweep's: choose another NAME.")
    for run in runs:
        cfg, path = run_config(inv, name, run)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        run["config"] = str(path)
    return {"name": name, "sets": sets, "folds": folds, "hosts": hosts, "runs": runs, "queues": {}, "launched": [],
            "moves": [], "fences": [], "lost": {}}
