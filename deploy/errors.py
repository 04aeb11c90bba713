"""Errors of the deploy tasks; the tasks turn them into a message and an exit code.

Exit codes of `fab`: 0 success; 1 a step on the host failed (the message names it and what to
do); 2 bad inventory, host choice or input (nothing was done on the host); 6 the host cannot be
reached, or the connection to it was lost; 130 interrupted (Ctrl-C: the remote step was ended and the
host's lock released). `fab monitor` adds the run's states (README.md, exit codes).
"""


class DeployError(Exception):
    """A step failed; the message says what happened and what to do."""

    exit_code = 1


class InventoryError(DeployError):
    """inventory.yaml is missing, or a key is unknown or of the wrong type."""

    exit_code = 2


class LocalInputError(DeployError):
    """The input is wrong (no host named, a missing data directory, a bad run name); nothing was done on the host."""

    exit_code = 2


class HostUnreachable(DeployError):
    """SSH cannot reach the host, or the connection died (no answer to keepalives, rsync timed out)."""

    exit_code = 6


class Interrupted(DeployError):
    """Ctrl-C: the step was ended (remote process group, local rsync) before the lock was released."""

    exit_code = 130
