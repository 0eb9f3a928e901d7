"""What the benchmarks share: the MNIST-size CNN and interleaved timing."""

import statistics
import sys
import time


def small_cnn(k, num_classes=10):
    """A small MNIST CNN, written against a Keras module `k` (Keras 3 or tf-keras)."""
    inputs = k.Input((28, 28, 1), name="image")
    h = k.layers.Conv2D(32, 3, activation="relu")(inputs)
    h = k.layers.MaxPooling2D()(h)
    h = k.layers.Conv2D(64, 3, activation="relu")(h)
    h = k.layers.MaxPooling2D()(h)
    h = k.layers.Flatten()(h)
    h = k.layers.Dense(128, activation="relu")(h)
    return k.Model(inputs, k.layers.Dense(num_classes)(h), name="small_cnn")


def interleaved(contenders, rounds):
    """Times each contender once per round, in turn (A B C A B C ...).

    Args:
        contenders: {name: zero-argument callable returning seconds}.
        rounds: how many rounds.

    Returns:
        {name: [seconds per round]}.
    """
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            times[name].append(run())
    return times


def median_ratio(numerator, denominator):
    """Median of the per-round ratios numerator[i] / denominator[i]."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def answer_epochs(train_epoch, after_epoch=None):
    """A benchmark worker's side of the epoch protocol on stdin/stdout.

    For each line `epoch`, times one `train_epoch()`, then calls
    `after_epoch()` (untimed, e.g. to write weights) and prints the seconds;
    any other line, or the end of input, stops it.
    """
    for line in sys.stdin:
        if line.strip() != "epoch":
            break
        start = time.perf_counter()
        train_epoch()
        seconds = time.perf_counter() - start
        if after_epoch is not None:
            after_epoch()
        print(f"{seconds:.6f}", flush=True)
