"""`fab sweep NAME ...`: plan, hosts, estimate, queues; then the follower (follow.py) unless --detach.

    code = sweep(config, inv, "lr", sets, hosts=["a", "b"], launch=None, folds=None, detach=False, say=say, console=console)
    code = status(config, inv, "lr", console)        # `fab sweep lr --status`: the table, without changing anything

Running it again continues the sweep: the record (plan.py) keeps its runs and which host's queue holds each; every
host gets its queue again (merged: sweep_queue.py put) and its runner started unless it runs. A host's runner skips
the runs that finished, resumes the stopped or lost ones, waits for one that trains: nothing is trained twice.
"""

from deploy.errors import LocalInputError
from deploy.host.connection import connect_host
from deploy.sweep import follow, plan
from deploy.sweep import hosts as sweep_hosts
from deploy.sweep.table import estimate_lines, print_table, rows_of


def the_record(inv, name, sets, folds, hosts):
    """The sweep's record: the one kept (a rerun: --set, --folds and --hosts, when given, must be as before), else new."""
    record = plan.load(name)
    if record is None:
        if not sets:
            raise LocalInputError(f"No sweep {name} on this machine ({plan.record_path(name)}): give its values, e.g. "
                                  f"fab sweep {name} --set train.learning_rate=0.001,0.0003 --hosts a,b")
        return plan.new_record(inv, name, sets, folds, hosts)
    if sets and sets != record["sets"]:
        raise LocalInputError(f"Sweep {name} exists with other values ({record['sets']}); `fab sweep {name}` continues it, "
                              "or choose another NAME for these.")
    if folds is not None and folds != record["folds"]:
        raise LocalInputError(f"Sweep {name} was planned with --folds {record['folds']}; drop --folds to continue it.")
    if hosts and sorted(hosts) != sorted(record["hosts"]):
        record["hosts"] = list(dict.fromkeys(record["hosts"] + hosts))  # more hosts: the runs not started yet spread over them
    return record


def all_ended(record):
    """Every run of the sweep recorded as ended (finished, failed, superseded) by an earlier follow."""
    ended = record.get("ended") or {}
    return bool(record["runs"]) and all(ended.get(r["run"]) in ("finished", "failed") for r in record["runs"])


def check_hosts(inv, hosts):
    unknown = [h for h in hosts if h not in inv.hosts]
    if unknown:
        raise LocalInputError(f"--hosts names {', '.join(unknown)}, not in the inventory's hosts ({', '.join(inv.hosts) or 'none'}) "
                              f"in {inv.path}.")
    return hosts


def launch_hosts(inv, config, record, count, say):
    """--launch N: hosts NAME-h1 ... NAME-hN launched (those launched for the sweep already are kept); the inventory again."""
    from deploy import launched
    from deploy.aws.launch import launch_host
    from deploy.inventory import load_inventory

    for k in range(1, count + 1):
        name = f"{record['name']}-h{k}"
        if launched.entry(name) is None:
            launch_host(inv, name, config, say)
        if name not in record["launched"]:
            record["launched"].append(name)
        if name not in record["hosts"]:
            record["hosts"].append(name)
    plan.save(record)
    return load_inventory(inv.path)


def assign(record):
    """The runs no queue holds yet, spread over the hosts (the one with the fewest queued runs first)."""
    queued = {run for runs in record["queues"].values() for run in runs}
    live = [h for h in record["hosts"] if h not in record["lost"]]
    for run in record["runs"]:
        if run["run"] in queued:
            continue
        host = min(live, key=lambda h: len(record["queues"].get(h, [])))
        record["queues"].setdefault(host, []).append(run["run"])


def prepare(config, inv, record, say):
    """Code and data synced to the sweep's hosts (a launched one provisioned first), except those whose runner or a
    training runs (a rerun: what they train with stays as it was synced, and sync-code would refuse)."""
    live = [h for h in record["hosts"] if h not in record["lost"]]
    busy = []
    for host in live:
        seen = follow.look(config, inv, record["name"], host)
        if seen and (seen["runner"].get("alive") or any(s.get("training") for s in seen["runs"].values())):
            busy.append(host)
            say(f"  {host}: its sweep runner or a training runs: code and data left as they are", "dim")
    todo = [h for h in live if h not in busy]
    if todo:
        sweep_hosts.prepare(inv, todo, say, provision=[h for h in todo if h in record["launched"]])


def refuse_held_runs(config, inv, record):
    """LocalInputError naming the runs of a new sweep that one of its hosts holds already (another sweep's, or by hand)."""
    runs = [r["run"] for r in record["runs"]]
    held = []
    for host in [h for h in record["hosts"] if h not in record["lost"]]:
        hinv = inv.for_host(host)
        target = connect_host(config, hinv, host)
        try:
            held += [f"{run} on {host}" for run in sweep_hosts.held_runs(target.conn, hinv, runs)]
        finally:
            target.conn.close()
    if held:
        raise LocalInputError(f"Sweep {record['name']} plans run(s) that exist already: {', '.join(held)} (not this sweep's: it "
                              "has not started any). A sweep never takes over a run it did not start: choose another NAME.")


def estimate(config, inv, record, say):
    """The estimate, printed before anything trains: configurations x the first host's smoke test (its measured time)."""
    first = next(h for h in record["hosts"] if h not in record["lost"])
    est = read_estimate(config, inv, first)
    if est is None:  # never measured there: the smoke test measures it (fab smoke-test, as deploy-full runs it)
        say(f"  {first}: no smoke test measured yet: fab -H {first} smoke-test", "dim")
        sweep_hosts.run_task(first, "smoke-test")
        est = read_estimate(config, inv, first)
    for line in estimate_lines(len(record["runs"]), len(record["hosts"]), est, inv.price_of(first), first):
        say(line, "bold")
    return est["seconds"] if est else None


def read_estimate(config, inv, host):
    target = connect_host(config, inv.for_host(host), host)
    try:
        return sweep_hosts.smoke_estimate(target.conn, inv.for_host(host))
    finally:
        target.conn.close()


def give_queues(config, inv, record, say):
    """Every host's queue put (its runs and how to launch them) and its runner started."""
    by_run = {run["run"]: run for run in record["runs"]}
    for host, runs in record["queues"].items():
        if host in record["lost"] or not runs:
            continue
        hinv = inv.for_host(host)
        target = connect_host(config, hinv, host)
        try:
            sweep_hosts.put_queue(target, hinv, record, [by_run[r] for r in runs], say)
            sweep_hosts.start_runner(target.conn, hinv, record["name"])
        finally:
            target.conn.close()
        say(f"  {host}: queue {', '.join(runs)}; its runner trains them one after another (tmux "
            f"{sweep_hosts.runner_session(hinv, record['name'])})")


def sweep(config, inv, name, sets, hosts=None, launch=None, folds=None, detach=False, say=print, console=None):
    """The whole `fab sweep` (module docstring), under the sweep's lock (one command per sweep at a time); its exit code."""
    plan.check_sweep_name(name)
    if hosts and launch:
        raise LocalInputError(f"--hosts {','.join(hosts)} and --launch {launch} are both given: a sweep trains on inventory "
                              "hosts (--hosts) or on hosts it launches (--launch N), not both at once; give one of them.")
    with plan.held(name):
        return run_sweep(config, inv, name, sets, hosts, launch, folds, detach, say, console)


def run_sweep(config, inv, name, sets, hosts, launch, folds, detach, say, console):
    record = the_record(inv, name, sets, folds, check_hosts(inv, hosts or []))
    if all_ended(record):  # nothing to train: no host launched, provisioned or asked
        say(f"sweep {name}: every run has ended (as recorded by its last follow); nothing to train, no host launched", "bold")
        downed = [h for h in record.get("downed", []) if h not in record["lost"]]  # terminated: asked of run storage only
        seen = follow.look_all(config, inv, {**record, "lost": [*record["lost"], *downed]})  # their scores
        for host, runs in record["queues"].items():  # a host gone without storage: the states the record keeps
            seen[host] = seen.get(host) or {"runner": {}, "runs": {r: {"state": record["ended"][r]} for r in runs}}
        print_table(console, record, rows_of(record, seen), record.get("per_run_seconds"))
        return 1 if "failed" in record["ended"].values() else 0
    if launch:
        inv = launch_hosts(inv, config, record, launch, say)
    if not [h for h in record["hosts"] if h not in record["lost"]]:
        raise LocalInputError("A sweep needs hosts: --hosts a,b (inventory names) or --launch N"
                              + (f" (lost: {', '.join(record['lost'])})." if record["lost"] else "."))
    say(f"sweep {name}: {len(record['runs'])} configurations ({', '.join(f'{k} in {v}' for k, v in record['sets'].items())}), "
        f"one split for all; hosts {', '.join(record['hosts'])}" + (f"; {record['folds']}-fold CV each" if record["folds"] else ""))
    prepare(config, inv, record, say)
    if not record["queues"]:  # a new sweep: none of its runs may exist on its hosts (it never adopts a run it did not start)
        refuse_held_runs(config, inv, record)
    per_run = estimate(config, inv, record, say)
    record["per_run_seconds"] = per_run
    assign(record)
    plan.save(record)
    give_queues(config, inv, record, say)
    if detach:
        say(f"The hosts go on with the laptop closed. `fab sweep {name} --status` shows where it is; `fab sweep {name}` "
            "follows it again (and moves the runs of a lost host).")
        return 0
    return follow.Follower(config, inv, record, say, console).loop()


def status(config, inv, name, console):
    """`fab sweep NAME --status`: the table, from each host's answer (nothing changed); exit 0."""
    plan.check_sweep_name(name)
    record = plan.load(name)
    if record is None:
        raise LocalInputError(f"No sweep {name} on this machine ({plan.record_path(name)}).")
    seen = follow.look_all(config, inv, record)
    print_table(console, record, rows_of(record, seen), record.get("per_run_seconds"))
    return 0
