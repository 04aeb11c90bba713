"""Where a lost run goes next: the hosts of recovery.hosts, in order, else a launched replacement.

    names = candidates(inv, lost="gpu1")             # recovery.hosts, starting after the lost host; the lost host last
    free, why, held = is_free(config, inv, "gpu2", run)   # answers over SSH, no training lives there; holds the run?
    name = launch_replacement(inv, config, run, n, say)   # recovery.launch: {type, spot} (deploy.aws.launch.launch_host)
    down_lost(config, inv, "gpu1", run, say)         # a launched host that was lost: terminated (fab down), unless it holds other runs
    down_done(config, inv, "gpu1", say)              # recovery.down_when_done: a launched host whose run finished and is stored

The lost host is always tried, last (listed in recovery.hosts or not): when it answers again it still holds the
run, and may be the only host that can continue a run of which storage has no epoch.
"""

import re

from deploy import launched
from deploy.errors import DeployError, LocalInputError
from deploy.host import training
from deploy.host.connection import connect_host
from deploy.runs import ledger


def check_hosts(inv):
    """recovery.hosts names inventory hosts (launched ones count); a LocalInputError naming the key otherwise."""
    unknown = [h for h in inv.recovery["hosts"] if h not in inv.hosts]
    if unknown:
        raise LocalInputError(f"Inventory key 'recovery.hosts' in {inv.path} names {', '.join(unknown)}, not under hosts: "
                              f"(known: {', '.join(sorted(inv.hosts)) or 'none'}). List the hosts `fab watch` may move a run to.")


def candidates(inv, lost):
    """recovery.hosts in order, beginning after the lost host; the lost host itself last, whether listed or not."""
    hosts = list(inv.recovery["hosts"])
    if lost in hosts:
        i = hosts.index(lost)
        return hosts[i + 1:] + hosts[:i] + [lost]
    return hosts + [lost]


def is_free(config, inv, name, run):
    """(free, why, held): free when host `name` answers and no training lives there; `held` is the last finished epoch
    of `run` when the host holds it as its current run (it can continue it with `train --resume`), else None."""
    hinv = inv.for_host(name)
    target = connect_host(config, hinv, name)
    try:
        info = training.run_state(target.conn, hinv, log_lines=0, quick=True, missing_ok=True)
    except Exception as e:  # noqa: BLE001 - unreachable, refused, a broken host: not free, say why
        return False, f"does not answer ({type(e).__name__}: {str(e)[:160]})", None
    finally:
        target.conn.close()
    if info is not None and training.training_lives(info):
        return False, f"busy: training {info.get('run')} is {info['state']} there", None
    if info is not None and info.get("run") == run and info.get("run_dir") and info["state"] != "finished":
        return True, "", (info.get("status") or {}).get("epoch") or 0
    return True, "", None


def replacement_name(run, n):
    base = re.sub(r"[^A-Za-z0-9_-]", "-", run)[:50].strip("-_") or "run"
    name = f"{base}-r{n}"
    while launched.entry(name):
        name += "x"
    return name


def launch_replacement(inv, config, run, n, say):
    """Launch a host as recovery.launch says (type, spot); returns its inventory name. DeployError when it cannot."""
    from deploy.aws.launch import launch_host

    spec = inv.recovery["launch"]
    name = replacement_name(run, n)
    say(f"no host of recovery.hosts is free: launching {name} ({spec['type']}{', spot' if spec['spot'] else ''})", "bold")
    host = launch_host(inv, name, config, say, instance_type=spec["type"], spot=bool(spec["spot"]))
    return host.name


def down_done(config, inv, name, say):
    """recovery.down_when_done: terminate the launched host `name` whose run finished, once no run of it is at risk
    (running, or neither fetched nor stored). Returns a sentence on what happened (nothing here raises)."""
    if not launched.entry(name):
        return f"{name} kept: it is not a host `fab launch` made"
    if launched.entry(name).get("cluster"):
        return f"{name} kept: it is one host of cluster {launched.entry(name)['cluster']} (`fab down {launched.entry(name)['cluster']}`)"
    from deploy.aws.terminate import terminate

    try:
        hinv = inv.for_host(name)
        target = connect_host(config, hinv, name)
        try:
            risky = ledger.runs_at_risk(target.conn, hinv, name)
        finally:
            target.conn.close()
        if risky:
            return f"{name} kept: it holds " + "; ".join(f"run {r} that {why}" for r, why in risky) + " (autostop powers it off when idle)"
        terminate(inv, name, say)
        return f"{name} terminated (fab down, recovery.down_when_done): its runs are stored or fetched"
    except (DeployError, Exception) as e:  # noqa: BLE001 - the run is done; a host left running is said, not fatal
        return f"{name} NOT terminated ({type(e).__name__}: {str(e)[:200]}): `fab down {name}` when you can"


def down_lost(config, inv, name, run, reachable, say):
    """Terminate the lost host `name` when `fab launch` made it (as `fab down`); a host that answers is asked first and
    kept while it holds another run at risk. Returns a sentence on what happened (nothing here raises)."""
    if not launched.entry(name):
        return f"{name} kept: it is not a host `fab launch` made"
    from deploy.aws.terminate import terminate

    try:
        if reachable and name in inv.hosts:
            hinv = inv.for_host(name)
            target = connect_host(config, hinv, name)
            try:
                risky = [(r, why) for r, why in ledger.runs_at_risk(target.conn, hinv, name) if r != run]
            finally:
                target.conn.close()
            if risky:
                return f"{name} kept: it holds " + "; ".join(f"run {r} that {why}" for r, why in risky) + f" (`fab down {name}` when fetched)"
        terminate(inv, name, say)
        return f"{name} terminated (fab down): the run goes on elsewhere"
    except (DeployError, Exception) as e:  # noqa: BLE001 - the recovery is done; a host left running is said, not fatal
        return f"{name} NOT terminated ({type(e).__name__}: {str(e)[:200]}): `fab down {name}` when you can"
