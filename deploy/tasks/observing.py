"""Looking at a run from the laptop: monitor, logs, fetch-results, tensorboard-tunnel.

None of them takes the host's lock (they change no run); fetch-results also reads run storage when the host
cannot give the run (deploy/runs/storage.py).
"""

from invoke.exceptions import Exit
from rich.text import Text

from deploy.errors import DeployError, HostUnreachable, LocalInputError
from deploy.host import cluster, observe, training
from deploy.runs import ledger, storage
from deploy.tasks.plumbing import as_exit, console, host_task, say
from trainer.results.run_view import MALFORMED, render  # the monitor screen; the host's monitor_training.sh draws the same
from trainer.results.visible import visible  # every text from the host: its control characters shown, never obeyed
from trainer.run_format import run_format


def monitor_cluster(hosts, group, follow=False, run=None, raw=False):
    """monitor on a cluster: the chief's screen, then a row per worker and the cluster's state (its worst worker's)."""
    def states():
        return cluster.each(hosts, lambda h: training.run_state(h.conn, h.inv, run=run, raw_log=raw))

    infos = states()
    if follow and infos[0]["state"] in ("starting", "running"):  # the chief's log: it prints every epoch of the run
        observe.follow(hosts[0].conn, hosts[0].inv, infos[0], raw=raw)
        infos = states()
    chief = infos[0]
    chief["price_per_hour"] = hosts[0].inv.price_of(hosts[0].target.label)
    render(chief, hosts[0].target.label, console)
    console.print(cluster.worker_table(group, hosts, infos))
    say(cluster.cost_line(hosts, infos))
    line, code = cluster.cluster_verdict(infos)
    say(line, "bold red" if code else "bold")
    if code:
        raise Exit(code=code)


@host_task(help={"follow": "stream the log until the run ends or Ctrl-C, then show the final state",
                 "run": "a run other than the current one",
                 "raw": "the log's lines as they are (default: without TensorFlow's C++ log lines)"}, on_cluster=monitor_cluster)
def monitor(h, follow=False, run=None, raw=False):
    """One screen: host, GPU, the run's state, epoch progress with ETA, metrics, disk, last log lines.

    Also the host's uptime, its cost so far and to the end of the run (price_per_hour), the EC2
    instance type and whether it is spot, and when autostop powers the host off.
    Exit code: 0 running or finished, 1 failed, 3 stopped, 4 vanished (no process of the run lives and
    it left no exit record), 5 no run, 6 host unreachable, 7 preempted (spot), 8 stalled (its processes
    live but status.json is older than stall_minutes), 11 superseded (this launch was fenced: the run moved
    to another launch); scripts can poll it.
    On a cluster: a row per worker; the state and exit code are those of its worst worker.
    """
    info = training.run_state(h.conn, h.inv, run=run, raw_log=raw)
    if follow and info["state"] in ("starting", "running"):
        observe.follow(h.conn, h.inv, info, raw=raw)
        info = training.run_state(h.conn, h.inv, run=run, raw_log=raw)
    info["price_per_hour"] = h.inv.price_of(h.target.label)  # the inventory as it is now
    render(info, h.target.label, console)
    if info["exit_code"]:
        raise Exit(code=info["exit_code"])


@host_task(help={"lines": "how many lines", "run": "a run other than the current one",
                 "raw": "the file as it is (default: without TensorFlow's C++ log lines)"})
def logs(h, lines=50, run=None, raw=False):
    """Print the last lines of the current run's train.log (without TensorFlow's C++ log lines unless --raw)."""
    info, text = observe.tail_log(h.conn, h.inv, run, lines, raw=raw)
    console.rule(Text(visible(f"{info['run_dir']}/train.log ({info['state']})")))
    console.out(visible(text if text.endswith("\n") or not text else text + "\n"), end="", highlight=False)


def fetch_stored(inv, error, run=None, dest="results", backup=False, from_storage=False):
    """fetch-results from run storage: with --from-storage, or when the host cannot be reached."""
    if error is not None and (run is None or not storage.enabled(inv)):
        hint = ("; with run storage, `fab fetch-results --run NAME` reads the run from there (`fab runs` lists them)"
                if storage.enabled(inv) else "")
        raise as_exit(error) if not hint else HostUnreachable(f"{as_exit(error).message.removeprefix('error: ')}{hint}") from None
    if run is None:
        raise LocalInputError("--from-storage needs --run NAME (`fab runs` lists the runs in storage).")
    training.valid_run_name(run, "--run")
    if error is not None:
        say(f"The host cannot be reached ({as_exit(error).message.removeprefix('error: ').splitlines()[0]}); "
            f"reading run {run} from storage instead.", "yellow")
    local, pointer = storage.fetch_run(inv, run, dest, say, backup=backup)
    show_results(local, run, pointer["state"])


@host_task(name="fetch-results", without_host=fetch_stored,
           help={"run": "a run other than the current one", "dest": "local folder (default: results)",
                 "backup": "also bring backup/ (the last finished epoch), to continue the run on another host",
                 "from_storage": "read the run (--run) from run storage (storage.url), not from the host"})
def fetch_results(h, run=None, dest="results", backup=False, from_storage=False):
    """Rsync the run dir back (model, metrics, history, TensorBoard logs, config, split; backup/ with --backup) to DEST/<host>/<run>/.

    Prints the final metrics table (accuracy, UAR, macro F1, per-class scores), the confusion
    matrix and the run's compute hours and cost when the run has finished. A run fetched with
    --backup continues elsewhere: `fab -H other deploy-full --resume-from DEST/<host>/<run>`.
    With run storage (storage.url), a --run that the host cannot give (it is unreachable, or no
    longer holds the run) is read from storage, and the first line says so; --from-storage skips the host.
    """
    if run:
        training.valid_run_name(run, "--run")
    if run and storage.enabled(h.inv):
        try:
            held = training.run_state(h.conn, h.inv, run=run, log_lines=0, quick=True).get("run_dir")
            why = f"holds no run {run}"
        except DeployError as e:  # the host answers but cannot tell (no code synced, a broken venv): storage can
            if isinstance(e, HostUnreachable):
                raise
            held, why = None, f"cannot tell about run {run} ({str(e).splitlines()[0][:200]})"
        if not held:
            say(f"The host {h.target.label} {why}; reading it from storage instead.", "yellow")
            return fetch_stored(h.inv, None, run=run, dest=dest, backup=backup)
    local, info = observe.fetch_results(h.target, h.inv, run, dest, say, backup=backup)
    ledger.record_fetch(h.target.label, info)  # `fab down` deletes a host only with its runs fetched after they ended
    if not ledger.record_fetch_on_host(h.conn, h.inv, info):  # autostop's guard on a host whose poweroff deletes it
        say("note: the host did not record the fetch (is its code synced?); autostop there may wait for it", "yellow")
    show_results(local, info["run"], info["state"])


def show_results(local, run, state):
    """The fetched run's metrics table (or its cross-validation's), and where its pictures are."""
    from trainer.results.report import print_cv, print_run_metrics  # rich only: no TensorFlow needed here

    metrics, cv = observe.read_json(local / run_format.METRICS), observe.read_json(local / run_format.CV)
    try:
        if cv:
            print_cv(cv, console, title=f"Run {run}, cross-validation")
        elif metrics:
            print_run_metrics(metrics, console, title=f"Run {run}")
        else:
            say(f"No metrics.json yet: the run is {state}.")
    except MALFORMED as e:  # a run file edited or damaged on the host: name it, no traceback
        raise DeployError(f"{local / (run_format.CV if cv else run_format.METRICS)} does not read as a results file of this version "
                          f"({type(e).__name__}: {e}); the run's files are in {local}.") from None
    pictures = sorted(local.glob("*.png")) + sorted(local.glob("fold-*/*.png"))
    if pictures:
        say(f"Pictures: {', '.join(visible(p.relative_to(local), layout='') for p in pictures)} in {local}")  # names from the host


@host_task(name="tensorboard-tunnel", help={"local_port": "local port to forward (default: tensorboard.local_port, 6006)"})
def tensorboard_tunnel(h, local_port=None):
    """Start TensorBoard on the host (its 127.0.0.1 only, in tmux) if needed, and forward it to localhost until Ctrl-C."""
    observe.tunnel(h.conn, h.inv, int(local_port or h.inv.tensorboard["local_port"]), say)
