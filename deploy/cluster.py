"""Several hosts as one training: an inventory `clusters:` entry, deployed, watched and stopped together.

    cluster = named_cluster(c, inv)                # the Cluster that -H (or the remembered host) names, or None
    members = connect_members(c, inv, cluster)     # [(name, Target, inventory as that host sees it)], chief first
    each(members, work)                            # work(member) on every host at once; DeployError naming those that failed
    workers = tf_config_workers(inv, cluster)      # ["10.0.1.5:23456", ...]: worker k's TF_CONFIG lists them
    line, code = cluster_verdict(infos)            # the cluster's state: its worst worker's, naming the one that failed

Worker 0, the first host of the cluster, is the chief: it writes the run's model, metrics,
backup and TensorBoard logs; every other host holds its own status.json and train.log.
"""

import json
from concurrent.futures import ThreadPoolExecutor

from deploy.errors import DeployError, LocalInputError
from deploy.hosts import connect_host, remembered_host

# worst first: the cluster's state is that of its worst worker
SEVERITY = ["failed", "vanished", "preempted", "stopped", "none", "starting", "running", "finished"]


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


def each(members, work):
    """`work(member)` on every member at once; the results in member order. A failure on any host
    is raised after all have ended, naming every host that failed and why."""
    with ThreadPoolExecutor(len(members)) as pool:
        futures = [pool.submit(work, m) for m in members]
        results, failures = [], []
        for (name, _, _), future in zip(members, futures):
            try:
                results.append(future.result())
            except DeployError as e:
                failures.append(f"{name}: {e}")
    if failures:
        raise DeployError("; ".join(failures))
    return results


def cluster_verdict(infos):
    """(one line, exit code) for the cluster from each worker's run state, worker 0 first."""
    states = [info["state"] for info in infos]
    worst = min(states, key=SEVERITY.index)
    code = next(info["exit_code"] for info in infos if info["state"] == worst)
    if worst not in ("failed", "vanished", "preempted"):
        done = sum(s == "finished" for s in states)
        return f"cluster {worst.upper()} ({done} of {len(infos)} workers finished)", code
    bad = [k for k, info in enumerate(infos) if info["state"] in ("failed", "vanished", "preempted")]
    first = [k for k in bad if ((infos[k].get("status") or {}).get("error") or {}).get("type") != "PeerLost"]
    culprit = (first or bad)[0]
    why = _why(infos[culprit])
    others = [k for k in bad if k != culprit]
    tail = f"; worker {', '.join(map(str, others))} stopped on losing it (PeerLost)" if others else ""
    return f"cluster {worst.upper()}: worker {culprit} failed first ({why}){tail}", code


def _why(info):
    error = (info.get("status") or {}).get("error") or {}
    record = info.get("exit") or {}
    if error.get("type"):
        return f"{error['type']}: {error.get('message', '')[:160]}"
    if record.get("exit_code") is not None:
        code = record["exit_code"]
        return f"its trainer exited with code {code}" + (f", killed by signal {code - 128}" if code > 128 else "")
    return info["state"]
