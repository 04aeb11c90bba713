"""The monitor screen's cost and autostop lines (trainer/results/run_view.py): fast, no SSH."""

from datetime import datetime, timezone

from trainer.results.run_view import autostop_line, budget_line, cost_line


def agent(alive=True, command="sudo -n /sbin/poweroff", waiting=False, fires_at="2026-11-25T17:45:00+00:00", **auto):
    return {"alive": alive, "autostop": {"armed": True, "idle_seconds": 1800, "command": command, "fires_at": fires_at,
                                         "waiting_for_training": waiting, **auto}}


def local_clock(iso):
    return datetime.fromisoformat(iso).astimezone().strftime("%H:%M")


def test_autostop_says_when_the_host_powers_off_in_the_viewers_time():
    assert autostop_line(None).plain == "off"
    assert autostop_line({"alive": True, "autostop": {"armed": False}}).plain == "off"
    when = "2026-11-25T17:45:00+00:00"
    assert autostop_line(agent()).plain == f"powers off at {local_clock(when)} if still idle"
    assert datetime.fromisoformat(when).tzinfo == timezone.utc
    assert autostop_line(agent(waiting=True)).plain == "powers off after 30 idle minutes; waits while the training runs"
    assert autostop_line(agent(command="touch /tmp/x")).plain.startswith("runs its command at ")
    assert "the host agent is not running" in autostop_line(agent(alive=False)).plain
    fired = {"fired_at": "2026-11-25T18:15:00+00:00", "exit_code": 0, "command": "sudo -n /sbin/poweroff"}
    assert autostop_line(agent(last_fired=fired)).plain.endswith(f"(last fired at {local_clock(fired['fired_at'])}, exit 0)")


def test_the_monitor_says_when_and_why_the_host_powers_off():
    why = "run r1 finished, its end stored: 10 idle minutes"
    assert autostop_line(agent(why=why, short=True)).plain == f"powers off at {local_clock('2026-11-25T17:45:00+00:00')} if still idle ({why})"
    assert autostop_line(agent(why="30 idle minutes")).plain == f"powers off at {local_clock('2026-11-25T17:45:00+00:00')} if still idle"
    soon = datetime.now(timezone.utc).replace(microsecond=0)
    cap = {"deadline": soon.isoformat(), "max_hours": 24, "command": "sudo -n /sbin/poweroff"}
    assert budget_line(cap).plain == f"powers off at {local_clock(cap['deadline'])} (24 h after launch), whatever it is doing"
    later = datetime.fromisoformat("2026-11-26T17:00:00+00:00").astimezone()  # not today: its day too
    assert budget_line({**cap, "deadline": later.isoformat()}).plain.startswith(f"powers off at {later:%a %H:%M} (24 h")
    reached = budget_line({**cap, "fired_at": cap["deadline"], "exit_code": 0}).plain
    assert reached == f"reached at {local_clock(cap['deadline'])}: `sudo -n /sbin/poweroff` exited 0"


def test_the_cost_line_prices_uptime_and_the_rest_of_the_run():
    assert cost_line({"uptime_seconds": 7200}, 1.5, 3600).plain == "up 2h00m   $3.00 so far at $1.5/h   about $1.50 more to finish"
    assert cost_line({"uptime_seconds": 600}, 1.5, None).plain == "up 10m00s   $0.25 so far at $1.5/h"


def test_without_a_price_the_cost_row_says_so_and_does_not_pass_uptime_off_as_the_cost():
    assert cost_line({"uptime_seconds": 7200}, None, 3600).plain == "no price set (price_per_hour in the inventory); host up 2h00m"
    assert cost_line({"uptime_seconds": 7200}, 0, None).plain == "no price set (price_per_hour in the inventory); host up 2h00m"
    assert cost_line({}, None, None).plain == "no price set (price_per_hour in the inventory)"


def test_a_run_file_edited_on_the_host_is_a_warning_not_a_traceback():
    import io

    from rich.console import Console

    from trainer.results.run_view import render

    out = io.StringIO()
    info = {"host": "h", "gpus": None, "disk": {"free_bytes": 2**34, "total_bytes": 2**35}, "state": "running", "run": "r1",
            "run_dir": "/runs/r1", "status": {"state": "running", "epoch": 2, "epochs": 9, "last": [1]}, "uptime_seconds": 60,
            "agent": None, "log_tail": ["\x1b[2J line"], "exit_code": 0}
    render(info, "gpu", Console(file=out, width=400))
    text = out.getvalue()
    assert "RUNNING" in text and "do not read as this version writes them" in text and "\x1b" not in text


def test_the_monitor_says_the_runs_processes_still_live_whatever_its_state_while_run_state_says_training():
    import io

    from rich.console import Console

    from trainer.results.run_view import render

    def screen(state, training, session_alive=True):
        info = {"host": "h", "gpus": None, "disk": {"free_bytes": 2**34, "total_bytes": 2**35}, "state": state, "run": "r1",
                "run_dir": "/runs/r1", "session": "s", "session_alive": session_alive, "status": None, "uptime_seconds": 60,
                "agent": None, "exit_code": 0, "exit": {"exit_code": 3}, "training": training, "processes": [{"pid": 42}] if training else []}
        out = io.StringIO()
        render(info, "gpu", Console(file=out, width=400))
        return out.getvalue()

    for state in ("preempted", "stopped", "failed", "superseded"):
        assert f"the run is {state}, but its processes (42) still live" in screen(state, True), state
        assert "still live" not in screen(state, False), state
    assert "tmux session s is closed; the training's processes (42) live on" in screen("running", True, session_alive=False)
    assert "still live" not in screen("running", True)


def test_hosts_sharing_an_address_are_told_apart_by_port(tmp_path):
    from deploy.inventory import load_inventory

    (tmp_path / "inventory.yaml").write_text("hosts:\n  a: {address: 10.0.0.5, port: 2201}\n  b: {address: 10.0.0.5, port: 2202}\n"
                                             "  c: {address: 10.0.0.6}\n")
    inv = load_inventory(tmp_path / "inventory.yaml")
    assert inv.find_host("10.0.0.5", 2202).name == "b" and inv.find_host("10.0.0.5", 2201).name == "a"
    assert inv.find_host("10.0.0.5", 2203) is None and inv.find_host("10.0.0.6").name == "c"


def test_storage_says_how_many_epochs_it_lags_behind_the_host_and_whether_its_uploader_was_restarted():
    """A dead uploader froze storage at its epoch while `fab runs` said "running" forever."""
    import time as clock

    from deploy.recovery.watch import progress
    from deploy.tasks.storage import lag_estimate
    from trainer.results.run_view import storage_line

    record = {"stored": {"epoch": 7, "at_epoch_seconds": clock.time() - 30}, "url": "s3://b/r1", "alive": True, "done": False,
              "seconds_since_stored": 30}
    assert "behind" not in storage_line(record, 7).plain
    assert "storage is 1 epoch behind the host" in storage_line(record, 8).plain
    assert "storage is 5 epochs behind the host" in storage_line(record, 12).plain
    dead = storage_line({**record, "alive": False, "restarts": 2}, 12).plain
    assert "its uploader is not running: the host agent starts it again" in dead and "restarted 2 time(s)" in dead, dead
    assert "fab train --resume" not in dead  # refused while the trainer lives: never the advice

    info = {"status": {"epoch": 12, "epochs": 30}, "storage": {"stored": {"epoch": 7}}}
    assert "storage 5 epochs behind (stored: epoch 7)" in progress(info)
    assert "behind" not in progress({"status": {"epoch": 8, "epochs": 30}, "storage": {"stored": {"epoch": 7}}})

    ten_minutes_ago = datetime.fromtimestamp(clock.time() - 600, timezone.utc).isoformat()
    assert "~5 epochs behind its host" in lag_estimate("running", ten_minutes_ago, 120)
    assert lag_estimate("finished", ten_minutes_ago, 120) == "" and lag_estimate("running", ten_minutes_ago, None) == ""
