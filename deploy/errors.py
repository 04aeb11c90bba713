"""Errors of the deploy tasks; the tasks turn them into a message and an exit code.

Exit codes of `fab`: 0 success; 2 bad inventory, host choice or local input (nothing was
done on the host); 1 a step on the host failed (the message names it and what to do).
"""


class DeployError(Exception):
    """A step failed; the message says what happened and what to do."""

    exit_code = 1


class InventoryError(DeployError):
    """inventory.yaml is missing, or a key is unknown or of the wrong type."""

    exit_code = 2


class LocalInputError(DeployError):
    """Something on this machine is wrong (no host named, a missing data directory)."""

    exit_code = 2
