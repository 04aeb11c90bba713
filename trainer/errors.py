"""Errors the command line turns into exit codes.

Exit codes of every `python -m trainer` command: 0 success, 2 bad input or
configuration (a `UserError`, message says what and where), 4 a peer of a multi-worker
training was lost (`PeerLost`), 5 superseded (`Superseded`: the run moved to another launch),
1 anything else.
"""

from trainer.run_format import run_format


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


class Superseded(Exception):
    """This launch was fenced (RUN/fenced.json names it: `fab watch` moved the run to another launch, or this host's
    uploader found a later launch's pointer in storage). It stopped at an epoch end, before any callback saved that
    epoch, and writes no result: the run's result is the other launch's."""

    exit_code = run_format.SUPERSEDED


class NonFiniteTraining(DataError):
    """An epoch's training produced NaN or inf (its loss or its weights). The run stops before any
    callback saves that epoch: its backup and best model are those of the last finite epoch."""

    def __init__(self, epoch, what):
        saved = f"its backup holds epoch {epoch - 1}, the last that was finite" if epoch > 1 else "no epoch was saved"
        super().__init__(f"{what} in epoch {epoch}: the run stopped before saving that epoch; {saved}. "
                         "Lower train.learning_rate or check the data (its normalisation, non-finite values in a file changed "
                         "since validation), then resume it or start a new run.")
        self.epoch = epoch


class NonFiniteLoss(NonFiniteTraining):
    """The training loss of an epoch became NaN or infinite."""

    def __init__(self, epoch, loss):
        super().__init__(epoch, f"The training loss became {loss}")
        self.loss = loss


class NonFiniteWeights(NonFiniteTraining):
    """A weight became NaN or infinite while the loss stayed finite: some kernels (oneDNN's max and ReLU,
    GPU kernels) turn NaN into 0, so the loss alone cannot be trusted to show it."""

    def __init__(self, epoch, names):
        super().__init__(epoch, f"The weights {', '.join(names[:3])}{' ...' if len(names) > 3 else ''} became non-finite")
        self.names = names


class NonFiniteData(DataError):
    """A clip read for training holds NaN or inf: it changed on disk after the data was validated (or
    was never validated). It is refused when read, whatever the loss would do with it."""

    def __init__(self, path, key, count, size):
        super().__init__(f"{path}: {key!r} holds {count} NaN/inf value(s) of {size}. Expected finite features: the file "
                         "changed after the data was validated. Replace it (or remove it from the data folder and start a "
                         "new run), then resume.")
        self.path = path


class ResumeError(UserError):
    """A run cannot be resumed: its backup cannot be read (the message names the files and why)."""
