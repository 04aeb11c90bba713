"""A stop asked by a signal: the first SIGTERM/SIGINT/SIGHUP asks the run to stop at its next epoch end (so that
the epoch's backup is saved); a second stops at once (KeyboardInterrupt, which run._fit turns into Stopped).
SIGHUP is what a closed tmux session or terminal sends. No Keras here: callbacks/stop.py's GracefulStop is this
as a Keras callback."""

import signal

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StopRequest:
    """`requested` turns true at the first of `signals`; the second raises KeyboardInterrupt."""

    def __init__(self, signals=SIGNALS):
        self.requested = False
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt(f"second signal {signal.Signals(signum).name}: stopping now")
        self.requested = True
        print(f"Received {signal.Signals(signum).name}: stopping after this epoch "
              "(send it again to stop at once).", flush=True)
