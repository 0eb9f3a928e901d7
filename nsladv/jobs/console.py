"""What the `nsladv` command shows a person: start-up noise filtered out, progress that suits a terminal or a log."""

import contextlib
import logging
import os
import re
import sys
import tempfile

# Lines TensorFlow's C++ runtime and its libraries print while loading on a machine without a GPU, or to advertise
# instructions a rebuild could use: nothing a user acts on. Anything else printed meanwhile is shown.
STARTUP_NOISE = re.compile(
    r"absl::InitializeLog|cudart_stub|cuInit|cuda_platform|cuda_dnn|cuda_fft|cuda_blas|cuda_executor"
    r"|Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered|TF-TRT Warning"
    r"|cpu_feature_guard|This TensorFlow binary is optimized|To enable the following instructions"
    r"|rebuild TensorFlow with the appropriate compiler flags|oneDNN custom operations are on"
    r"|You may see slightly different numerical results due to floating-point round-off"
    r"|To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`"
)


@contextlib.contextmanager
def startup_noise_filtered(stream=None):
    """Runs the block with the process's stderr (file descriptor 2) captured, then shows what was not noise.

    TensorFlow's runtime writes to the file descriptor directly, below Python's `sys.stderr`, so only a
    redirect at that level catches it. Captured lines that do not match `STARTUP_NOISE` are written to `stream`
    (default `sys.stderr`) when the block ends, whether it ended in an error or not.
    """
    stream = stream or sys.stderr
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (an embedded interpreter): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines() if not _noise(line)]
            if kept:
                stream.write("\n".join(kept) + "\n")
                stream.flush()


def _noise(line):
    return not line.strip() or bool(STARTUP_NOISE.search(line))


# TFDS's warning when it first sees the folder of a dataset it is about to prepare.
_TFDS_NOISE = re.compile(r"Variant folder .* has no dataset_info\.json")


def load_tensorflow():
    """Imports TensorFlow and lists its devices (where CUDA complains, if it will) with the start-up noise filtered."""
    with startup_noise_filtered():
        import tensorflow as tf

        tf.config.list_physical_devices()
    logging.getLogger("absl").addFilter(lambda record: not _TFDS_NOISE.search(record.getMessage()))


def interactive(stream=None):
    """Whether `stream` (default stdout) is a terminal: live progress bars there, plain lines in a log."""
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def keras_verbosity(quiet=False, stream=None):
    """Keras' `verbose` for `fit`: live bars on a terminal (1), one line per epoch in a log (2), none when quiet."""
    return 0 if quiet else (1 if interactive(stream) else 2)


def duration(seconds):
    """`"42 s"`, `"3 min 05 s"`, `"1 h 12 min"`."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class AttackProgress:
    """Progress within each attack of an evaluation, with the time left: `evaluate_robustness`'s `step_progress`.

    On a terminal a Keras progress bar per attack and radius; in a log file a line with the time left at most every
    `every` seconds while an attack runs, so that a redirected log reads as lines and a long attack is not silent.
    """

    def __init__(self, *, stream=None, live=None, every=30.0, clock=None):
        import time

        self.stream = stream or sys.stdout
        self.live = interactive(self.stream) if live is None else live
        self.every = every
        self.clock = clock or time.perf_counter
        self._bar = None
        self._started = self._shown = 0.0

    def __call__(self, attack, epsilon, done, total):
        now = self.clock()
        if done == 0:
            self._started, self._shown = now, now
            if self.live:
                import keras

                self._bar = keras.utils.Progbar(total, unit_name="example")
            return
        if self.live:
            self._bar.update(done)
            return
        # In a log, only a long attack's intermediate steps: the evaluation writes a line when each attack ends.
        if done >= total or now - self._shown < self.every:
            return
        self._shown = now
        elapsed = now - self._started
        left = elapsed / done * (total - done)
        self.stream.write(
            f"  {attack} at {epsilon:g}: {done}/{total} examples attacked in {duration(elapsed)}, "
            f"about {duration(left)} left\n"
        )
        self.stream.flush()
