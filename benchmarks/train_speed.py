"""Seconds per training epoch: plain Keras 3, nsladv FGSM and PGD-10, NSL's legacy wrapper.

A fifth contender, `floor_fgsm`, is the least an FGSM step can cost in Keras 3:
a hand-written train step with no nsladv code (one forward and backward pass
giving weight and input gradients, the sign step and clip, one more forward and
backward pass on the neighbor). nsladv's FGSM is judged against it too.

The same small CNN on the same 3,600 MNIST training digits (spread over the
standard training set), batch 128,
trained in one run. After a warm-up epoch each, the contenders take turns one
epoch at a time (A B C D A B C D ...); the figures are medians over rounds and
the ratios medians of per-round ratios. NSL's legacy
`nsl.keras.AdversarialRegularization` runs under tf-keras in a subprocess
(`TF_USE_LEGACY_KERAS=1`) that waits for its turn.

These machines stall whole epochs now and then (the same epoch takes 1.6 s or
2.6 s), so the table also shows each contender's fastest epoch, and the JSON
the ratios of fastest epochs beside the medians.

Usage: python -m benchmarks.train_speed [--rounds 9]
The last line printed is one JSON object.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

import nsladv
from benchmarks.common import interleaved
from benchmarks.common import median_ratio
from benchmarks.common import small_cnn
from nsladv import datasets as data

EPSILON = 0.1
MULTIPLIER = 0.2

TRAIN_EXAMPLES = 3_600


class FloorFGSM(keras.Model):
    """FGSM adversarial training written out by hand: the cost floor in Keras 3."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def call(self, x, training=None):
        return self.base(x, training=training)

    def train_step(self, data):
        x, y = data
        weights = self.base.trainable_weights
        with tf.GradientTape() as tape:
            tape.watch(x)
            y_pred = self.base(x, training=True)
            clean = self.compute_loss(x=x, y=y, y_pred=y_pred)
        grads = tape.gradient(clean, weights + [x])
        neighbor = tf.clip_by_value(x + EPSILON * tf.sign(grads[-1]), 0.0, 1.0)
        with tf.GradientTape() as tape:
            adversarial = MULTIPLIER * self.compute_loss(x=neighbor, y=y, y_pred=self.base(neighbor, training=True))
        neighbor_grads = tape.gradient(adversarial, weights)
        self.optimizer.apply_gradients(zip([a + b for a, b in zip(grads[:-1], neighbor_grads)], weights))
        return self.compute_metrics(x, y, y_pred, sample_weight=None)  # the same logs as the others


def keras3_contender(dataset, wrap_settings):
    keras.utils.set_random_seed(0)
    base = small_cnn(keras)
    if wrap_settings == "floor":
        model = FloorFGSM(base)
    else:
        model = base if wrap_settings is None else nsladv.wrap(base, **wrap_settings)
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(dataset, epochs=1, verbose=0)  # warm-up: tracing

    def epoch():
        start = time.perf_counter()
        model.fit(dataset, epochs=1, verbose=0)
        return time.perf_counter() - start

    return epoch


def legacy_contender(x, y, batch_size, workdir):
    path = pathlib.Path(workdir) / "train.npz"
    np.savez(path, x=x, y=y)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.nsl_legacy_worker",
            str(path),
            str(batch_size),
            str(EPSILON),
            str(MULTIPLIER),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=pathlib.Path(__file__).resolve().parent.parent,  # where `benchmarks` is a package
    )
    if worker.stdout.readline().strip() != "ready":
        raise RuntimeError("the NSL legacy worker did not start; run it alone to see why")

    def epoch():
        worker.stdin.write("epoch\n")
        worker.stdin.flush()
        return float(worker.stdout.readline())

    return epoch, worker


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    splits = data.load()
    x, y = data.as_arrays(data.spread(splits.train, TRAIN_EXAMPLES))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch_size).cache().prefetch(tf.data.AUTOTUNE)
    threat = {"epsilon": EPSILON, "clip_range": (0, 1), "multiplier": MULTIPLIER}
    with tempfile.TemporaryDirectory() as workdir:
        legacy, worker = legacy_contender(x, y, args.batch_size, workdir)
        contenders = {
            "plain": keras3_contender(dataset, None),
            "fgsm": keras3_contender(dataset, dict(threat, steps=1)),
            "pgd10": keras3_contender(dataset, dict(threat, steps=10)),
            "floor_fgsm": keras3_contender(dataset, "floor"),
            "nsl_legacy": legacy,
        }
        try:
            times = interleaved(contenders, args.rounds)
        finally:
            worker.stdin.write("quit\n")
            worker.stdin.close()
            worker.wait(timeout=60)

    print(f"{len(x)} digits, batch {args.batch_size}, {args.rounds} interleaved rounds after a warm-up epoch")
    print(f"{'contender':<12} {'median s/epoch':>15} {'min':>7} {'max':>7}")
    for name, values in times.items():
        print(f"{name:<12} {statistics.median(values):>15.3f} {min(values):>7.3f} {max(values):>7.3f}")
    result = {
        "fgsm_over_plain": round(median_ratio(times["fgsm"], times["plain"]), 3),
        "pgd10_over_plain": round(median_ratio(times["pgd10"], times["plain"]), 3),
        "fgsm_over_nsl_legacy": round(median_ratio(times["fgsm"], times["nsl_legacy"]), 3),
        "nsl_legacy_over_plain": round(median_ratio(times["nsl_legacy"], times["plain"]), 3),
        "floor_fgsm_over_plain": round(median_ratio(times["floor_fgsm"], times["plain"]), 3),
        "fgsm_over_floor_fgsm": round(median_ratio(times["fgsm"], times["floor_fgsm"]), 3),
        "fastest_epoch_ratios": {
            "fgsm_over_plain": round(min(times["fgsm"]) / min(times["plain"]), 3),
            "pgd10_over_plain": round(min(times["pgd10"]) / min(times["plain"]), 3),
            "fgsm_over_nsl_legacy": round(min(times["fgsm"]) / min(times["nsl_legacy"]), 3),
            "floor_fgsm_over_plain": round(min(times["floor_fgsm"]) / min(times["plain"]), 3),
            "fgsm_over_floor_fgsm": round(min(times["fgsm"]) / min(times["floor_fgsm"]), 3),
        },
        "seconds_per_epoch": {name: round(statistics.median(v), 3) for name, v in times.items()},
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "nsladv": nsladv.__version__},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
