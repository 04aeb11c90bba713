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
    worker stopped too. Every worker resumes from the chief's backup with `train --resume`.
    `record` goes into status.json's error beside type and message: `cause`, the error this worker
    saw (UnavailableError, InternalError, ...), and `local`, whether that was a failure of its own
    collective library (NCCL's InternalError/UnknownError) rather than the signal of a peer gone."""

    exit_code = 4

    def __init__(self, message, cause=None, local=False):
        super().__init__(message)
        self.record = {"cause": cause, "local": bool(local)} if cause else {}


class NonFiniteLoss(DataError):
    """The training loss of an epoch became NaN or infinite. The run stops before any callback saves
    that epoch: its backup and best model are those of the last finite epoch."""

    def __init__(self, epoch, loss):
        saved = f"its backup holds epoch {epoch - 1}, the last with a finite loss" if epoch > 1 else "no epoch was saved"
        super().__init__(f"The training loss became {loss} in epoch {epoch}: the run stopped before saving that epoch; {saved}. "
                         "Lower train.learning_rate or check the data (its normalisation, non-finite values in a file changed "
                         "since validation), then resume it or start a new run.")
        self.epoch, self.loss = epoch, loss


class ResumeError(UserError):
    """A run cannot be resumed: its backup cannot be read (the message names the files and why)."""
