"""Errors the command line turns into exit codes.

Exit codes of every `python -m trainer` command: 0 success, 2 bad input or
configuration (a `UserError`, message says what and where), 4 a peer of a multi-worker
training was lost (`PeerLost`), 1 anything else.
"""


class UserError(Exception):
    """Bad input or configuration: the message names the file or setting and what was expected."""

    exit_code = 2


class ConfigError(UserError):
    """A configuration value is unknown, of the wrong type or out of range."""


class DataError(UserError):
    """The data cannot train a model: no valid file, a missing class, an empty split."""


class PeerLost(Exception):
    """A worker of a multi-worker training stopped answering (killed, frozen, network gone): this
    worker stopped too. Every worker resumes from the chief's backup with `train --resume`."""

    exit_code = 4
