"""Text from the host shown, never obeyed (trainer/results/visible.py): the monitor screen and the metrics tables
with hostile strings, fast and without SSH. tests/test_host_text.py does the same through `fab`."""

import io
import subprocess
import sys

from rich.console import Console

from trainer.results.report import print_cv, print_run_metrics
from trainer.results.run_view import render
from trainer.results.visible import VisibleStream, visible, visible_tree

CLEAR, TITLE, CSI8 = "\x1b[2J", "\x1b]0;pwned\x07", "\x9b31m"  # ED, OSC title, an 8-bit CSI
LINK = "[link=https://evil.example]click[/link]"  # rich markup that would become an OSC 8 escape


def test_visible_shows_control_characters_and_keeps_layout():
    assert visible(f"a{CLEAR}b{TITLE}\tc\nd") == "a\\x1b[2Jb\\x1b]0;pwned\\x07\tc\nd"
    assert visible("name\n.png\r", layout="") == "name\\n.png\\r"
    assert visible(CSI8 + "\x7f\x00\u202eabc") == "\\x9b31m\\x7f\\x00\\u202eabc"
    assert visible("plain ± é 日本 [x]") == "plain ± é 日本 [x]"
    assert visible(visible(CLEAR)) == visible(CLEAR)  # a second pass changes nothing
    assert visible_tree({"k\x1b": ["\x1b", 1, None, {"x": "\x07"}]}) == {"k\\x1b": ["\\x1b", 1, None, {"x": "\\x07"}]}


def test_a_remote_pty_stream_keeps_its_lines_and_shows_escapes():
    out = io.StringIO()
    stream = VisibleStream(out)
    for chunk in ("epoch 1\r", "\nlog ", CLEAR + "\r\n", "bare\rcr\r\n"):
        stream.write(chunk)
    assert out.getvalue() == "epoch 1\nlog \\x1b[2J\nbare\\rcr\n"


def test_the_filter_of_the_hosts_follow_log_shows_escapes():
    out = subprocess.run([sys.executable, "trainer/results/visible.py"], input=f"a{CLEAR}\n{TITLE}\tb\n".encode() + b"\xff\n",
                         capture_output=True, check=True).stdout.decode()
    assert out == "a\\x1b[2J\n\\x1b]0;pwned\\x07\tb\n\ufffd\n"


def hostile(text):
    return f"{text}{CLEAR}{TITLE}{CSI8}{LINK}"


def screen(draw):
    buf = io.StringIO()
    draw(Console(file=buf, width=200, soft_wrap=True, highlight=False))
    return buf.getvalue()


def test_the_monitor_screen_shows_every_hostile_string_as_text():
    info = {"state": "failed", "host": hostile("gpu"), "run": "r1", "run_dir": hostile("/runs/r1"), "session": hostile("s"),
            "gpus": [{"error": hostile("smi")}], "disk": {"free_bytes": 2**31, "total_bytes": 2**32, "path": hostile("/d")},
            "uptime_seconds": 60, "error": hostile("err"), "log": hostile("train.log"),
            "log_tail": [hostile("line one"), "\ttabbed"],
            "exit": {"exit_code": 1, "ended_at": hostile("t"), "reason": hostile("reason")},
            "status": {"epochs": 5, "epoch": 2, "fold": hostile("1"), "folds": 2, "seconds_per_epoch": hostile("3"),
                       "last": {hostile("val_uar"): 0.5}, "best": {"metric": hostile("val_uar"), "value": 0.5, "epoch": 1},
                       "error": {"type": hostile("DataError"), "message": hostile("bad")},
                       "distribution": {"replicas": 1, "strategy": hostile("One"), "global_batch_size": 16}},
            "agent": {"alive": True, "instance": {"ec2": True, "instance_type": hostile("g5")},
                      "autostop": {"armed": True, "idle_seconds": 60, "command": hostile("cmd"),
                                   "fired": {"fired_at": "x", "command": hostile("cmd"), "exit_code": 0}}}}
    out = screen(lambda console: render(info, hostile("label"), console))
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out, repr(out)
    assert "line one\\x1b[2J\\x1b]0;pwned\\x07\\x9b31m" + LINK in out and "  tabbed" in out  # a tab is layout (rich expands it)
    for field in ("gpu", "/runs/r1", "smi", "err", "reason", "val_uar", "DataError", "bad", "g5", "cmd", "label"):
        assert f"{field}\\x1b[2J" in out, field


def test_fetched_metrics_print_hostile_names_as_text():
    per_class = {"ANG": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}}
    split = {"samples": 2, "uar": 0.5, "accuracy": 0.5, "macro_f1": 0.5, "classes": [hostile("ANG")], "confusion_matrix": [[2]],
             "per_class": {hostile(k): v for k, v in per_class.items()}, "interval": hostile("over actors"),
             "per_corpus": {hostile("crema"): {"samples": 2, "actors": 1, "uar": 0.5, "accuracy": 0.5, "macro_f1": 0.5}}}
    metrics = {"validation": split, "test": split, "headline": "test"}
    out = screen(lambda console: print_run_metrics(metrics, console, title="Run r1"))
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out, repr(out)
    assert ("ANG\\x1b[2J\\x1b]0;pwned\\x07\\x9b31m" + LINK) in out and "crema\\x1b[2J" in out and "over actors\\x1b" in out
    cv = {"folds": 2, "folds_done": 1, "per_fold": [{"fold": hostile("1"), "test_actors": ["a"], "test": split}], "pooled": split}
    out = screen(lambda console: print_cv(cv, console))
    assert "\x1b" not in out and "1\\x1b[2J" in out and "ANG\\x1b[2J" in out
