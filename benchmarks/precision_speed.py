"""Precision and compilation on this machine: the default recipe's training step and APGD in float32 and bfloat16
(and the training step under XLA), and how close APGD runs to a plain matmul's FLOP/s in the same precision.

The training step is the default pipeline's (pipelines/mnist.py: PGD-3 neighbors, TRADES' KL, batch 128) through
`nsladv.AdversarialModel.train_on_batch`, the CNN built under each precision's Keras policy; `--jit` adds it
compiled with XLA (`jit_compile=True`) in float32.

APGD-CE (the evaluation's first multi-step attack) runs on the default pipeline's CNN (pipelines/mnist.py,
initial weights) over `--examples` digits labelled with the model's own predictions and attacked at radius 0, so
that no digit is ever fooled and every one runs all `--steps` iterations (no early stop). A pass is one forward
and one backward pass to the input for one digit; a run makes `examples * (steps + 1)` of them (the +1: the
starting point's gradient). Its FLOPs are counted from the layers (a convolution's or dense layer's
multiply-adds, x2; the backward pass to the input costs what the forward does, layer for layer; pooling and
activations are not counted), so the FLOP/s figure is a lower bound.

The peak is a `tf.matmul` of two square matrices (`--matmul`), compiled, in the same precision. Precisions are
timed interleaved (float32, bfloat16, float32, ...) after a warm-up; the figures are medians over `--rounds`, the
ratio the median of per-round ratios.

`--batch-sizes` also times the training step at other batch sizes in each precision, and prints an example's
time at the pipeline's batch over its time at each (the median of per-round ratios; > 1: the larger batch is faster
per example).

Usage: python -m benchmarks.precision_speed [--examples 500] [--steps 20] [--rounds 5] [--precisions float32,bfloat16]
       [--jit] [--batch-sizes 256,512]
The last line printed is one JSON object.
"""

import argparse
import json
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

import nsladv
from benchmarks.common import interleaved
from benchmarks.common import median_ratio
from nsladv import precision as precision_lib
from nsladv.robustness import APGD


def forward_flops(model):
    """FLOPs of one example's forward pass: 2 x the multiply-adds of its convolutions and dense layers."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, channels = layer.output.shape
            kh, kw = layer.kernel_size
            total += 2 * height * width * channels * kh * kw * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return total


def attack_seconds(model, x, y, steps):
    """Seconds for APGD-CE with `steps` iterations on every digit (radius 0: none is fooled, none stops early)."""
    attacker = APGD(steps=steps, restarts=1, random_start=False).batch_attacker(model, seed=0)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(y))
    start = time.perf_counter()
    clean, robust, _ = attacker.masks_and_margins(data, 0.0)
    seconds = time.perf_counter() - start
    if not robust.all():
        raise RuntimeError(f"{int((~robust).sum())} digits were fooled at radius 0: the timing would stop early")
    return seconds


def training_step(precision, build_model, jit_compile=False, batch_size=None):
    """A callable that times `repeats` training steps of the default recipe in `precision` (after one warm-up).

    `batch_size` replaces the pipeline's (the seconds are still a step's: divide by the batch for an example's).
    """
    pipeline = nsladv.load_pipeline("mnist")
    batch_size = batch_size or pipeline.batch_size
    keras.utils.set_random_seed(0)
    with precision_lib.policy_scope(precision):
        base = build_model((28, 28, 1), 10)
    model = nsladv.AdversarialModel(base, threat=pipeline.threat, regularization=pipeline.regularization)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-3), loss, jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    x, y = rng.random((batch_size, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, batch_size)
    model.train_on_batch(x, y)

    def seconds(repeats=5):
        start = time.perf_counter()
        for _ in range(repeats):
            model.train_on_batch(x, y)
        return (time.perf_counter() - start) / repeats

    return seconds


def matmul_seconds(size, dtype, repeats=10):
    a = tf.cast(tf.random.stateless_normal((size, size), (1, 2)), dtype)
    b = tf.cast(tf.random.stateless_normal((size, size), (3, 4)), dtype)
    product = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32)))
    product(a, b).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        product(a, b).numpy()
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--matmul", type=int, default=1024, help="the peak's matrix size")
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--jit", action="store_true", help="also the training step under XLA, in float32")
    parser.add_argument(
        "--batch-sizes", default="", help="also the training step at these batch sizes (e.g. 256,512), each precision"
    )
    args = parser.parse_args()
    precisions = args.precisions.split(",")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    default_batch = nsladv.load_pipeline("mnist").batch_size

    from pipelines.mnist import build_model

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).random((args.examples, 28, 28, 1), dtype=np.float32)
    models = {}
    for name in precisions:
        keras.utils.set_random_seed(0)
        with precision_lib.policy_scope(name):
            models[name] = build_model((28, 28, 1), 10)
    y = np.argmax(np.asarray(models[precisions[0]](x), np.float32), -1).astype(np.int64)
    for model in models.values():  # labels every precision's model gets right at radius 0
        y_here = np.argmax(np.asarray(model(x), np.float32), -1)
        keep = y_here == y
        x, y = x[keep], y[keep]
    flops = 2 * forward_flops(models[precisions[0]])
    passes = len(y) * (args.steps + 1)
    dtypes = {"float32": tf.float32, "bfloat16": tf.bfloat16}
    contenders = {}
    for name in precisions:
        contenders[f"train_step_{name}"] = training_step(name, build_model)
    if args.jit:
        contenders["train_step_float32_xla"] = training_step("float32", build_model, jit_compile=True)
    for size in batch_sizes:
        for name in precisions:
            contenders[f"train_step_{name}_batch{size}"] = training_step(name, build_model, batch_size=size)
    for name in precisions:
        contenders[f"apgd_{name}"] = lambda m=models[name]: attack_seconds(m, x, y, args.steps)
        contenders[f"matmul_{name}"] = lambda d=dtypes[name]: matmul_seconds(args.matmul, d)
    interleaved(contenders, 1)  # warm-up: traces and oneDNN's first-call set-up
    times = interleaved(contenders, args.rounds)
    summary = {
        "examples": int(len(y)),
        "steps": args.steps,
        "flops_per_pass": flops,
        "rounds": args.rounds,
        "auto_precision": precision_lib.choose("auto").to_dict(),
    }
    print(f"{'precision':<10} {'passes/s':>9} {'GFLOP/s':>8} {'matmul GFLOP/s':>15} {'share of peak':>14}")
    for name in precisions:
        apgd = statistics.median(times[f"apgd_{name}"])
        peak = 2 * args.matmul**3 / statistics.median(times[f"matmul_{name}"])
        rate = passes / apgd
        summary[name] = {
            "apgd_seconds": round(apgd, 3),
            "passes_per_second": round(rate, 1),
            "gflops": round(rate * flops / 1e9, 2),
            "matmul_gflops": round(peak / 1e9, 2),
            "share_of_matmul_peak": round(rate * flops / peak, 3),
        }
        s = summary[name]
        print(
            f"{name:<10} {s['passes_per_second']:>9.0f} {s['gflops']:>8.1f} {s['matmul_gflops']:>15.1f} "
            f"{s['share_of_matmul_peak']:>14.2f}"
        )
    for name in [n for n in contenders if n.startswith("train_step")]:
        summary[name + "_seconds"] = round(statistics.median(times[name]), 4)
        print(f"{name:<24} {summary[name + '_seconds'] * 1e3:8.1f} ms a step")
    for size in batch_sizes:
        for name in precisions:
            # An example's time at the pipeline's batch over its time at this batch: > 1 when the larger batch is
            # faster per example.
            per_example = [
                (default / default_batch) / (larger / size)
                for default, larger in zip(times[f"train_step_{name}"], times[f"train_step_{name}_batch{size}"])
            ]
            key = f"train_example_{name}_batch{default_batch}_over_batch{size}_time"
            summary[key] = round(statistics.median(per_example), 3)
            print(f"{key:<48} {summary[key]:.3f}")
    if args.jit:
        summary["train_step_xla_over_float32_time"] = round(
            median_ratio(times["train_step_float32_xla"], times["train_step_float32"]), 3
        )
    if len(precisions) == 2:
        a, b = precisions
        summary[f"train_step_{a}_over_{b}_time"] = round(
            median_ratio(times[f"train_step_{a}"], times[f"train_step_{b}"]), 3
        )
        summary[f"apgd_{a}_over_{b}_time"] = round(median_ratio(times[f"apgd_{a}"], times[f"apgd_{b}"]), 3)
        summary[f"matmul_{a}_over_{b}_time"] = round(median_ratio(times[f"matmul_{a}"], times[f"matmul_{b}"]), 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
