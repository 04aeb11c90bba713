"""Several hosts as one training: an inventory `clusters:` entry, deployed, watched and stopped together.

    cluster = named_cluster(c, inv)                # the Cluster that -H (or the remembered host) names, or None
    members = connect_members(c, inv, cluster)     # [(name, Target, inventory as that host sees it)], chief first
    each(hosts, work)                              # work(host) on every host at once; DeployError naming those that failed
    prepare(hosts, steps, run_name, say_for)       # deploy-full's steps on every host at once, a line per host and step
    launch_workers(hosts, workers, run_name, say_for)  # one worker per host in tmux with its TF_CONFIG, chief first
    workers = tf_config_workers(inv, cluster)      # ["10.0.1.5:23456", ...]: worker k's TF_CONFIG lists them
    line, code = cluster_verdict(infos)            # the cluster's state: its worst worker's, naming the one that failed
    cost_line(hosts, infos)                        # every host's price_per_hour summed: so far, and to the end of the run

Worker 0, the first host of the cluster, is the chief: it writes the run's model, metrics,
backup and TensorBoard logs; every other host holds its own status.json and train.log.
"""

import json
import time
from concurrent.futures import ThreadPoolExecutor

from deploy.errors import DeployError, LocalInputError
from deploy.host import agent, training
from deploy.host.connection import connect_host
from deploy.host.remembered import remembered_host
from deploy.host.steps import end_all_steps

# worst first: the cluster's state is that of its worst worker
SEVERITY = ["failed", "vanished", "preempted", "stalled", "superseded", "stopped", "none", "starting", "running", "finished"]


def named_cluster(c, inv):
    """The inventory cluster that `-H NAME` names, or without -H the one deploy-full last went to."""
    from fabric import Connection

    if isinstance(c, Connection):
        name = c.original_host
    else:
        record = remembered_host()
        name = record.get("label") if record and record.get("cluster") else None
    return inv.clusters.get(name) if name else None


def connect_members(c, inv, cluster):
    return [(name, connect_host(c.config, inv, name), inv.for_host(name)) for name in cluster.hosts]


def tf_config_workers(inv, cluster):
    hosts = [inv.hosts[name] for name in cluster.hosts]
    workers = [f"{h.worker_address or h.address}:{h.worker_port or cluster.port}" for h in hosts]
    if len(set(workers)) != len(workers):
        raise LocalInputError(f"Cluster {cluster.name}: two workers would listen on the same address and port ({', '.join(workers)}); "
                              "give each host its own worker_address, or worker_port.")
    return workers


def tf_config(workers, index):
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}, separators=(",", ":"))


def each(hosts, work):
    """`work(host)` on every host at once (each with .conn, .inv, .target); the results in host order.
    A failure on any host is raised after all have ended, naming every host that failed and why."""
    with ThreadPoolExecutor(len(hosts)) as pool:
        futures = [pool.submit(work, h) for h in hosts]
        results, failures = [], []
        for h, future in zip(hosts, futures):
            try:
                results.append(future.result())
            except DeployError as e:
                failures.append(f"{h.target.label}: {e}")
            except KeyboardInterrupt:  # Ctrl-C reaches this thread only: end the steps the others run, then stop
                end_all_steps()
                raise
    if failures:
        raise DeployError("; ".join(failures))
    return results


def prepare(hosts, steps, name, say_for):
    """Every host through `steps` [(name, step(h, run, say))] at once, a line per host and step; a
    step's own lines are kept back (several hosts at once would interleave them), its error is not."""
    def run_steps(h):
        training.refuse_new_run_name(h.conn, h.inv, name)
        for i, (step_name, step) in enumerate(steps, 1):
            t0 = time.monotonic()
            try:
                step(h, {"name": name, "resume_from": None}, lambda message, style=None: None)
            except DeployError as e:
                say_for(h)(f"✗ [{i}/{len(steps)}] {step_name} failed after {time.monotonic() - t0:.1f} s", "bold red")
                raise DeployError(f"step {step_name}: {e}") from None
            say_for(h)(f"✓ [{i}/{len(steps)}] {step_name} {time.monotonic() - t0:.1f} s", "green")

    each(hosts, run_steps)


def launch_workers(hosts, workers, name, say_for, resume=False):
    """One worker per host in its tmux session with its TF_CONFIG: the chief first, so the others find it.
    If one cannot start, those already started (which would wait for it) are stopped."""
    for k, h in enumerate(hosts):
        try:
            agent.start_training(h.conn, h.inv, h.target.label, say_for(h), resume=resume, run_name=name, tf_config=tf_config(workers, k))
        except DeployError as e:
            for started in hosts[:k]:
                training.stop(started.conn, started.inv, say_for(started), wait=10)
            raise DeployError(f"worker {k} on {h.target.label} could not start, so the {k} worker(s) already started were "
                              f"stopped: {e}") from None


def worker_table(group, hosts, infos):
    """The monitor's row per worker: state, epoch, seconds per epoch, GPU use."""
    from rich.table import Table
    from rich.text import Text

    from trainer.results.visible import visible

    rows = Table(title=f"cluster {group.name}", title_justify="left")
    for column in ("worker", "host", "state", "epoch", "s/epoch", "GPU"):
        rows.add_column(column)
    for k, (h, info) in enumerate(zip(hosts, infos)):
        st = info.get("status") or {}
        gpus = info.get("gpus")
        gpu = ", ".join(f"{g.get('utilization')}%" for g in gpus) if gpus else "none"
        cells = (f"{k}{' (chief)' if k == 0 else ''}", h.target.label, info["state"], f"{st.get('epoch', 0)}/{st.get('epochs', '?')}",
                 str(st.get("seconds_per_epoch") or "-"), gpu)
        rows.add_row(*(Text(visible(cell)) for cell in cells))  # from the hosts: plain text, control characters shown
    return rows


def cost_line(hosts, infos):
    """The cluster's cost: each host's price_per_hour (the inventory's, else the one its launch recorded)
    summed; so far (each host's uptime at its price) and to the end of the run (the chief's ETA at the sum)."""
    prices = {h.target.label: h.inv.price_of(h.target.label) or (info.get("agent") or {}).get("price_per_hour")
              for h, info in zip(hosts, infos)}
    uptimes = {h.target.label: info.get("uptime_seconds") for h, info in zip(hosts, infos)}
    chief = infos[0]
    eta = (chief.get("status") or {}).get("eta_seconds") if chief["state"] in ("starting", "running") else None
    return cluster_cost(prices, uptimes, eta)


def cluster_cost(prices, uptimes, eta_seconds):
    """One line from {host: USD per hour or None}, {host: seconds up or None} and the run's ETA in seconds.
    Hosts without a price are named; the others' cost is still shown, as theirs only."""
    unknown = [name for name, price in prices.items() if not price]
    known = {name: price for name, price in prices.items() if price}
    if not known:
        return f"cluster cost: set price_per_hour in the inventory for {', '.join(unknown)} to see the cluster's cost"
    total = sum(known.values())
    text = f"cluster cost ${total:g}/h ({' + '.join(f'{name} ${price:g}' for name, price in known.items())}"
    text += f"; {', '.join(unknown)} not counted: set price_per_hour in the inventory)" if unknown else ")"
    if all(uptimes.get(name) is not None for name in known):
        text += f": ${sum(uptimes[name] / 3600 * price for name, price in known.items()):.2f} so far"
    if eta_seconds:
        hours, rest = divmod(int(eta_seconds), 3600)
        text += f", about ${eta_seconds / 3600 * total:.2f} more to finish (ETA {hours}h{rest // 60:02d}m)"
    return text


def cluster_verdict(infos):
    """(one line, exit code) for the cluster from each worker's run state, worker 0 first."""
    states = [info["state"] for info in infos]
    worst = min(states, key=SEVERITY.index)
    code = next(info["exit_code"] for info in infos if info["state"] == worst)
    if worst not in ("failed", "vanished", "preempted"):
        done = sum(s == "finished" for s in states)
        return f"cluster {worst.upper()} ({done} of {len(infos)} workers finished)", code
    bad = [k for k, info in enumerate(infos) if info["state"] in ("failed", "vanished", "preempted")]
    culprit = _culprit(infos, bad)
    if culprit is None:
        each = "; ".join(f"worker {k}: {_why(infos[k])}" for k in bad)
        return (f"cluster {worst.upper()}: which worker failed first cannot be told from their records, each lost contact "
                f"with a peer ({each})"), code
    why = _why(infos[culprit])
    others = [k for k in bad if k != culprit]
    tail = f"; worker {', '.join(map(str, others))} stopped on losing it (PeerLost)" if others else ""
    return f"cluster {worst.upper()}: worker {culprit} failed first ({why}){tail}", code


def _culprit(infos, bad):
    """The failed worker to blame: the first whose error is its own (not PeerLost: an error, a kill, a
    vanished trainer), else the one PeerLost whose own collective failed (NCCL: `local` in its record)
    while the others got the signal of a peer gone; None where the records cannot tell."""
    errors = {k: (infos[k].get("status") or {}).get("error") or {} for k in bad}
    own = [k for k in bad if errors[k].get("type") != "PeerLost"]
    if own:
        return own[0]
    local = [k for k in bad if errors[k].get("local")]
    return local[0] if len(local) == 1 else None


def _why(info):
    error = (info.get("status") or {}).get("error") or {}
    record = info.get("exit") or {}
    if error.get("type") == "PeerLost" and error.get("cause"):
        own = ", a failure of its own collective" if error.get("local") else ""
        return f"PeerLost on {error['cause']}{own}: {error.get('message', '')[:160]}"
    if error.get("type"):
        return f"{error['type']}: {error.get('message', '')[:160]}"
    if record.get("exit_code") is not None:
        code = record["exit_code"]
        return f"its trainer exited with code {code}" + (f", killed by signal {code - 128}" if code > 128 else "")
    return info["state"]
