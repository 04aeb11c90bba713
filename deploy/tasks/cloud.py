"""The EC2 tasks: `fab launch`, `fab down`, `fab instances` (thin: the work is in deploy/aws/).

They act on the cloud, not on one host, so they take no -H; errors become exit codes as in
deploy.tasks.plumbing (9: no capacity or quota anywhere tried). boto3 is imported only when one runs:
`fab -l` works on a laptop without the `aws` extra.
"""

import functools
import time

from fabric import task
from invoke.exceptions import Exit
from rich.table import Table
from rich.text import Text

from deploy import launched
from deploy.errors import DeployError, LocalInputError
from deploy.host import training
from deploy.host.connection import connect_host
from deploy.inventory import load_inventory
from deploy.runs import ledger
from deploy.tasks.plumbing import as_exit, console, interrupts_end_the_step, say


class Laptop:
    """What a cloud task's body gets: the inventory and Fabric's config (for the SSH connections)."""

    def __init__(self, c):
        self.config, self.inv = c.config, load_inventory()


def cloud_task(name=None, **task_kwargs):
    def decorate(body):
        @functools.wraps(body)
        def run(c, *args, **kwargs):
            try:
                with interrupts_end_the_step():
                    return body(Laptop(c), *args, **kwargs)
            except Exit:
                raise
            except BaseException as e:
                raise as_exit(e) from None

        return task(name=name or body.__name__.replace("_", "-"), **task_kwargs)(run)
    return decorate


@cloud_task(help={
    "name": "the host's name, for -H NAME afterwards (with --count N: the cluster's; its hosts are NAME-1..N)",
    "type": "instance type (default launch.type, g5.xlarge); launch.alternatives are tried after it",
    "spot": "a spot instance (launch.spot_interruption: terminate, or stop with a persistent request)",
    "on_demand": "on-demand even where the inventory says launch.spot: true",
    "fallback_on_demand": "with --spot: on-demand when no spot capacity is found",
    "disk": "root disk in GB (default launch.disk_gb, 150)", "region": "AWS region (default launch.region)",
    "max_hours": "budget cap: the host powers itself off this many hours after launch (default launch.max_hours, 24; 0: none)",
    "idle_minutes": "autostop: the host powers itself off after this many idle minutes (default launch.autostop_minutes, 30; 0: none)",
    "count": "2 or more: a cluster NAME of that many hosts in one placement group (a clusters: entry)"}, positional=["name"])
def launch(k, name, type=None, spot=False, on_demand=False, fallback_on_demand=False, disk=None, region=None,  # noqa: A002
           max_hours=None, count=None, idle_minutes=None):
    """Launch an EC2 GPU instance and make it inventory host NAME (usable with -H NAME by every task).

    The AWS Deep Learning Base GPU AMI for Ubuntu (launch.ami_parameter, or launch.ami), your public
    key as a key pair, a security group of the tool's own with SSH only from launch.ssh_cidr (default:
    this machine's public address as /32) and the worker port only within the group, IMDSv2 required.
    Capacity and quota errors try the next zone, then launch.alternatives; exit 9 when all fail,
    naming what was tried and the quota to raise. Waits for SSH, then prints the price per hour.
    The host stops billing on its own: autostop after 30 idle minutes (10 once its run's end is
    stored or fetched) and a budget cap 24 h after launch, unless --idle-minutes 0 / --max-hours 0.
    With --count N: a cluster NAME of N hosts (NAME-1..N) in one placement group, whose private
    addresses are its worker addresses (`fab -H NAME deploy-full` trains on all of them).
    """
    from deploy.aws.launch import launch_cluster, launch_host
    from deploy.aws.prices import usd

    if spot and on_demand:
        raise LocalInputError("Give --spot or --on-demand, not both.")
    if count is not None and (not str(count).isdigit() or int(count) < 2):
        raise LocalInputError(f"--count expects 2 or more hosts (a cluster; one host needs no --count). Received: {count!r}")
    cluster = name if count is not None else None
    options = {"instance_type": type, "spot": True if spot else False if on_demand else None, "disk_gb": disk, "region": region,
               "fallback_on_demand": True if fallback_on_demand else None, "max_hours": max_hours,
               "idle_minutes": idle_minutes}
    started = time.monotonic()
    if cluster:
        hosts = launch_cluster(k.inv, cluster, int(count), k.config, say, **options)
    else:
        hosts = [launch_host(k.inv, name, k.config, say, **options)]
    price = hosts[0].price_per_hour
    target = cluster or name
    say(f"Ready in {time.monotonic() - started:.0f} s: {', '.join(h.name for h in hosts)}"
        + (f" at {usd(price)}/h each ({launched.entry(hosts[0].name).get('price_source')})" if price is not None
           else " (price unknown: set price_per_hour in the inventory)"), "bold")
    say(f"  fab -H {target} deploy-full     # then fab monitor, fab fetch-results")
    say(f"  fab down {target}              # when done: the instance bills by the hour until then (fab instances lists them)")


@cloud_task(help={"name": "a host or cluster that `fab launch` made",
                  "force": "terminate even if the host holds runs that were not fetched (they are lost with its disk)"})
def down(k, name, force=False):
    """Terminate a launched host (or every host of a launched cluster) and forget it.

    Refuses while the host holds a run that is running, or neither fetched (after it ended) nor
    stored, naming it, unless --force; also when the host cannot be asked. A host EC2 lists as
    terminated (or no longer knows) is forgotten without asking it: its disk is gone. Deletes the
    tool's security group, key pair and placement group when no other instance uses them.
    """
    from deploy.aws.terminate import terminate

    names = launched.members(name)
    if not names:
        known = sorted(launched.load()["hosts"]) or ["none"]
        raise LocalInputError(f"{name} was not launched by `fab launch` from here (launched: {', '.join(known)}). "
                              "`fab instances` lists every instance the tool launched in the region.")
    gone = gone_hosts(k, names)
    for host, why in gone.items():
        say(f"{host} ({launched.entry(host)['instance_id']}): {why}: its disk is gone, nothing of it to fetch; forgetting it", "yellow")
    if not force:
        refuse_if_runs_at_risk(k, names, name, gone)
    terminate(k.inv, name, say)
    say(f"{name} is gone; nothing of it bills any more.", "bold")


GONE = ("shutting-down", "terminated")  # the disk is gone (or going) with the instance: nothing left to protect


def gone_hosts(k, names):
    """{host: why} of the hosts EC2 lists as terminated, or no longer knows: `fab down` forgets them without asking them."""
    from deploy.aws.query import states
    from deploy.aws.session import connect

    gone, by_region = {}, {}
    for host in names:
        entry = launched.entry(host)
        by_region.setdefault(entry["region"], []).append(host)
    for region, hosts in by_region.items():
        known = states(connect(k.inv, region), [launched.entry(h)["instance_id"] for h in hosts])
        for host in hosts:
            state = known.get(launched.entry(host)["instance_id"])
            if state is None or state in GONE:
                gone[host] = f"EC2 lists it as {state}" if state else "EC2 no longer knows it"
    return gone


def refuse_if_runs_at_risk(k, names, name, gone=()):
    problems = []
    for host in names:
        entry = launched.entry(host)
        if host not in k.inv.hosts or host in gone:  # never got an address (never reached), or its disk is gone already
            continue
        inv = k.inv.for_host(host)
        target = connect_host(k.config, inv, host)
        try:
            problems += [f"run {run} on {host} {why}" for run, why in ledger.runs_at_risk(target.conn, inv, host)]
        except Exception as e:  # noqa: BLE001 - unreachable, refused, no code synced: we cannot know, so we refuse
            problems.append(f"{host} ({entry['instance_id']}) could not be asked about its runs ({type(e).__name__}: {str(e)[:200]})")
        finally:
            target.conn.close()
    if problems:
        raise DeployError(f"Not terminating {name}: its disk would take these with it:\n  " + "\n  ".join(problems)
                          + f"\nFetch them (`fab -H HOST fetch-results --run RUN`), or `fab down {name} --force` to delete them.")


@cloud_task(help={"region": "the region to list (default launch.region; the regions of launched hosts are always listed)",
                  "idle_minutes": "flag a running instance with no training and no fab task for this long (default 60)"})
def instances(k, region=None, idle_minutes=None):  # a string option: a bad value gets our error, not invoke's traceback
    """Every instance the tool launched (tag facenet-deploy): state, type, spot, uptime, cost so far, its run.

    The forgotten-instance finder: a running instance with no training and no fab task for over an
    hour (--idle-minutes) is flagged. Its work is asked over SSH where it is reachable; otherwise the
    table says it is unknown.
    """
    from deploy.aws.launch import number
    from deploy.aws.prices import usd
    from deploy.aws.query import instances as list_instances
    from deploy.aws.session import connect

    idle_minutes = 60.0 if idle_minutes is None else number(idle_minutes, "--idle-minutes", "a number of minutes above 0", float, 0, above=True)
    first = connect(k.inv, region)
    regions = [first.region] + sorted({e["region"] for e in launched.load()["hosts"].values()} - {first.region})
    rows = [row for r in regions for row in list_instances(first if r == first.region else connect(k.inv, r))]
    for row in rows if k.inv.price_per_hour is not None else ():  # the inventory's price overrides the launch's and the catalog's
        row.price_per_hour, row.price_source = k.inv.price_per_hour, f"price_per_hour in {k.inv.path}"
    table = Table(title=f"instances in {', '.join(regions)}")
    for column in ("name", "instance", "state", "type", "spot", "zone", "up", "cost so far", "run"):
        table.add_column(column, no_wrap=True)  # ids and names whole; the note wraps
    table.add_column("note")
    idle = []
    for row in rows:
        run, note = work_of(k, row, idle_minutes * 60, idle)
        table.add_row(*(Text(str(v)) for v in (
            row.name, row.instance_id, row.state, row.instance_type, "yes" if row.spot else "no", row.zone, hours(row.uptime_seconds),
            f"${row.cost_so_far:.2f} at {usd(row.price_per_hour)}/h" if row.cost_so_far is not None else "?", run, note)))
    console.print(table)
    listed = {row.instance_id for row in rows}
    for n, e in sorted(launched.load()["hosts"].items()):
        if e.get("instance_id") not in listed:
            say(f"{n} ({e.get('instance_id')}, {e.get('region')}) is recorded as launched, but EC2 lists it as terminated or unknown: "
                f"`fab down {n}` forgets it.", "yellow")
    price = "the inventory's price_per_hour" if k.inv.price_per_hour is not None else "the price recorded at launch (or the catalog's)"
    say(f"Cost so far: since each instance's last start, at {price}: an estimate, not the bill.", "dim")
    for name, text in idle:
        say(f"IDLE: {name} {text}: `fab down {name}` (fetch its runs first), or `fab -H {name} autostop --idle-minutes 30`.", "bold yellow")
    if not rows:
        say("No instance launched by the tool is running or stopped in these regions.")


def work_of(k, row, idle_seconds, idle):
    """(run column, note) for one row: asked over SSH when the host is ours and running."""
    from deploy.aws.prices import usd

    if row.state != "running":
        return "-", "stopped: no compute billed (its disk is)" if row.state == "stopped" else ""
    if not row.recorded or row.name not in k.inv.hosts:
        return "?", "not launched from here: its work is unknown"
    inv = k.inv.for_host(row.name)
    target = connect_host(k.config, inv, row.name)
    try:
        seen = ledger.activity(target.conn, inv)
        try:
            info = training.run_state(target.conn, inv, log_lines=0)
            run = f"{info.get('run') or 'none'} ({info['state']})"
        except DeployError:  # no code on the host yet
            run = seen["run"] or "none"
    except Exception as e:  # noqa: BLE001 - unreachable, refused: say so
        return "?", f"SSH: {type(e).__name__}: {str(e)[:80]}; its work is unknown"
    finally:
        target.conn.close()
    if seen["training"]:
        return run, "training"
    note = f"idle {hours(seen['idle_seconds'])}: no training, no fab task"
    if seen["idle_seconds"] > idle_seconds:
        price = f" ({usd(row.price_per_hour)}/h)" if row.price_per_hour is not None else ""
        idle.append((row.name, f"has run no training and no fab task for {hours(seen['idle_seconds'])}{price}"))
        note = "IDLE: " + note
    return run, note


def hours(seconds):
    seconds = int(seconds or 0)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
