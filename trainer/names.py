"""Names that become paths or tmux session names: one rule, checked wherever a name enters.

    check_run_name("exp-3")            # returns it
    check_run_name("exp/b", "--run-name")  # UserError naming the setting and the rule

A run name is a directory under the runs dir and a value the host hands back to the laptop
(`.current`), so it must never hold a path separator, `..` or markup.
The pattern belongs to remote_scripts/run_format.py, shared with the host side.
"""

from trainer.errors import UserError
from trainer.run_format import run_format

RUN_NAME = run_format.RUN_NAME


def check_run_name(name, setting="run name"):
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
        raise UserError(f"{setting} expects a name of 1-100 letters, digits, '.', '_' or '-' that starts with a letter "
                        f"or digit (it becomes a directory name). Received: {name!r}")
    return name
