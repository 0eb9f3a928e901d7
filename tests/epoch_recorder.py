"""Used by subprocess tests: record each epoch a harden run starts, die with SIGKILL after one."""

import os
import signal

from nsladv import hardening
from nsladv import schedules


def install(log_path, kill_after_epoch=-1):
    """Makes `hardening.harden` log epochs to `log_path` and kill itself after `kill_after_epoch`."""
    log = open(log_path, "a")  # noqa: SIM115 - open for the life of the process

    class Recorder(schedules.EpsilonWarmup):
        def on_epoch_begin(self, epoch, logs=None):
            log.write(f"{epoch}\n")
            log.flush()
            super().on_epoch_begin(epoch, logs)

        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            if epoch == kill_after_epoch:
                os.kill(os.getpid(), signal.SIGKILL)

    hardening.EpsilonWarmup = Recorder
