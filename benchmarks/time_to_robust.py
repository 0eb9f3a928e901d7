"""Time to robustness: nsladv's default recipe, hand-written Madry PGD training, Wong's FGSM-RS, NSL's legacy wrapper.

Every contender trains the default pipeline's CNN (pipelines/mnist.py) from the
same initial weights on the same data: the standard MNIST training digits
(54,000; the last 6,000 are validation), batch 128, Adam. After every epoch
the base model is attacked on the same 200 validation digits (spread over the
6,000 the monitor below does not read; never test digits, since recipe choices
are made with this benchmark) at L-inf epsilon 0.3 with the same worst-case
cascade: FGSM,
APGD-CE (100 steps), APGD-T (100 steps, 3 target classes), an example robust
only if every attack fails (fixed seeds). Training time excludes those
evaluations.

Contenders (budgets: the defaults below, about 55 minutes in all on 2 cores):

- `nsladv`: `nsladv harden`'s default recipe, read from pipelines/mnist.py
  (PGD-3, step 0.15, random start, TRADES' KL distance x6, half an epoch of
  epsilon warm-up, cosine learning rate from 4e-3, 10 epochs, Adam's moving
  average of the weights at 0.99) with the RobustnessMonitor harden adds
  (PGD-10 on 500 validation digits after every epoch; a 30-point fall stops
  training), its time counted as training; when the pipeline averages the
  weights (`ema_momentum`), the monitor and the evaluations after each epoch
  attack the average, as harden keeps it;
- `madry_pgd7`: Madry-style PGD adversarial training written by hand in Keras 3:
  PGD-7, step 0.1 (k x step = 2.33 epsilon), random start, the loss on the
  adversarial examples only; 8 epochs, Adam 1e-3 with cosine decay, and a
  3-epoch epsilon warm-up, stepped per epoch (without a warm-up PGD training
  at 0.3 from scratch can stay at chance on MNIST);
- `fgsm_rs`: Wong et al.'s FGSM with a random start (uniform in the ball,
  one step of 1.25 epsilon, projected), 10 epochs, Adam with a one-cycle
  learning rate peaking at 5e-3, the same 3-epoch warm-up;
- `nsl_legacy`: NSL's own `nsl.keras.AdversarialRegularization` under tf-keras
  (FGSM at 0.3, multiplier 3), 10 epochs, in a subprocess; its weights are
  loaded into the Keras 3 model after each epoch to be attacked.

The contenders train interleaved, one epoch each in turn (nsladv, Madry, FGSM-RS,
NSL, nsladv, ...; the ones with more epochs finish last), so a drift in the
machine's speed falls on all of them rather than on whichever ran last; their
random draws share TensorFlow's global generator, seeded once.

Passes are forward+backward passes per training example, per epoch: nsladv
k (attack, 3) + 2 (the clean and the neighbor batch in the training step) = 5
(the monitor's PGD-10 on 500 digits adds about 0.1 of a pass, not counted);
PGD-k k + 1; FGSM-RS 2; NSL's FGSM 1 + 2 = 3.

`time_to_target_ratio`: nsladv's training time until its robust accuracy first
reaches what Madry-style training reaches at the end of its budget, divided by
Madry's whole training time (goal: <= 0.1). `passes_to_target_ratio`: the same
in passes. Neither is defined if nsladv never gets there (then null).

Precision: nsladv trains in `--precision` (default auto: bfloat16 where the
hardware computes it natively, see `nsladv.precision`), Madry-style training in
float32, what users write by default. When nsladv's precision is not float32, a
second Madry-style contender trains in nsladv's precision, and
`time_to_target_ratio_same_precision` divides by its time instead (goal: <= 0.2);
otherwise it equals `time_to_target_ratio`. Evaluations are float32.

The ratios need only nsladv and Madry-style training: `--fgsm-epochs 0 --nsl-epochs 0` leaves the other two
out (about a third of the run).

Usage: python -m benchmarks.time_to_robust [--out runs/time_to_robust] [--eval-examples 200] [--pipeline mnist]
       [--precision auto|float32|bfloat16] [--fgsm-epochs 10] [--nsl-epochs 10]
It writes time_to_robust.png and time_to_robust.json in --out; the last line printed is one JSON object.
"""

import argparse
import contextlib
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

import nsladv
from nsladv import datasets as data
from nsladv import precision as precision_lib
from nsladv.guards import averaged_weights
from nsladv.robustness import FGSM
from nsladv.robustness import apgd_ce
from nsladv.robustness import apgd_t
from nsladv.robustness import evaluate_robustness
from nsladv.schedules import EpsilonWarmup

EPSILON = 0.3
BATCH = 128
ROOT = pathlib.Path(__file__).resolve().parent.parent


def default_pipeline():
    return nsladv.load_pipeline("mnist")


class Recorder:
    """Robust accuracy after every epoch, against cumulative training seconds and passes."""

    def __init__(self, name, base, test, passes_per_epoch, seed):
        self.name, self.base, self.test = name, base, test
        self.passes_per_epoch, self.seed = passes_per_epoch, seed
        self.averaged_by = None  # an optimizer whose moving average of the weights is what training keeps
        self.points = []  # (epoch, train seconds so far, passes so far, clean, robust)
        self.seconds = 0.0

    def epoch_done(self, seconds):
        self.seconds += seconds
        with averaged_weights(self.averaged_by) if self.averaged_by is not None else contextlib.nullcontext():
            result = evaluate_robustness(
                precision_lib.float32_copy(self.base),
                self.test,
                epsilons=[EPSILON],
                attacks=[FGSM, apgd_ce(), apgd_t(target_classes=3)],
                seed=self.seed,
            )
        epoch = len(self.points) + 1
        point = {
            "epoch": epoch,
            "train_seconds": round(self.seconds, 1),
            "passes": epoch * self.passes_per_epoch,
            "clean": result["clean_accuracy"],
            "robust": result["worst_case"][f"{EPSILON:g}"],
        }
        self.points.append(point)
        print(
            f"{self.name:<11} epoch {epoch:>2}: {point['train_seconds']:7.1f} s, {point['passes']:>4} passes, "
            f"clean {100 * point['clean']:5.1f}%, robust {100 * point['robust']:5.1f}%",
            flush=True,
        )


def timed_epoch(fit_one_epoch):
    start = time.perf_counter()
    fit_one_epoch()
    return time.perf_counter() - start


class _EpochClock(keras.callbacks.Callback):
    """Hands each epoch's training seconds (the monitor's check included, as `nsladv harden` pays it) to a
    `Recorder`, whose evaluation is not counted."""

    def __init__(self, recorder):
        super().__init__()
        self.recorder = recorder

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.recorder.epoch_done(time.perf_counter() - self.start)


class _Interleave(keras.callbacks.Callback):
    """After each nsladv epoch (its clock stopped), one epoch of every other contender: A B C D A B C D ..."""

    def __init__(self, others):
        super().__init__()
        self.others = others

    def on_epoch_end(self, epoch, logs=None):
        advance(self.others)


def advance(runs):
    """One epoch of each run still going (a generator that yields after each epoch); drops the finished ones."""
    for run in list(runs):
        if next(run, StopIteration) is StopIteration:
            runs.remove(run)


def run_nsladv(base, train, steps_per_epoch, recorder, epochs, monitor_data, others=(), pipeline=None):
    """`nsladv harden`'s recipe: the pipeline's (default: mnist's) settings, its epsilon warm-up and its
    RobustnessMonitor; `others` (epoch generators) advance one epoch after each of nsladv's, outside its clock."""
    from nsladv.guards import RobustnessMonitor
    from nsladv.robustness.attacks import pgd

    pipeline = pipeline or default_pipeline()
    model = nsladv.AdversarialModel(base, threat=pipeline.threat, regularization=pipeline.regularization)
    model.compile(
        optimizer=pipeline.optimizer(steps_per_epoch, epochs),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    averaged = pipeline.ema_momentum is not None
    if averaged:  # what harden keeps after an epoch, so what the recorder attacks
        recorder.averaged_by = model.optimizer
    monitor = RobustnessMonitor(
        base,
        *monitor_data,
        epsilon=pipeline.threat.epsilon,
        attack=pgd(10, 1, clip_range=pipeline.threat.clip_range, norm=pipeline.threat.norm),
        seed=pipeline.seed,
        averaged_weights=averaged,
    )
    # The clock's epoch end runs after the monitor's, so the monitor's time counts as training; the other
    # contenders' epochs run after the clock's.
    callbacks = [EpsilonWarmup(pipeline.epsilon_warmup_epochs), monitor, _EpochClock(recorder), _Interleave(others)]
    model.fit(train, epochs=epochs, callbacks=callbacks, verbose=0)
    if monitor.collapsed_at is not None:
        print(f"nsladv: the monitor stopped training at epoch {monitor.collapsed_at + 1} (collapse)", flush=True)


def hand_written(base, train, steps_per_epoch, recorder, epochs, *, steps, step_size, schedule, warmup_epochs):
    """PGD-k (Madry) or FGSM with a random start (Wong, `steps=1`) in a plain Keras 3 / TF training step; a
    generator that yields after each epoch."""
    optimizer = keras.optimizers.Adam(schedule(epochs * steps_per_epoch))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    radius = tf.Variable(0.0, trainable=False)

    @tf.function
    def train_step(x, y):
        x_adv = tf.clip_by_value(x + tf.random.uniform(tf.shape(x), -radius, radius), 0.0, 1.0)
        for _ in range(steps):
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                loss = loss_fn(y, base(x_adv, training=False))
            step = step_size * radius / EPSILON * tf.sign(tape.gradient(loss, x_adv))
            x_adv = tf.clip_by_value(tf.clip_by_value(x_adv + step, x - radius, x + radius), 0.0, 1.0)
        with tf.GradientTape() as tape:
            loss = loss_fn(y, base(x_adv, training=True))
        grads = tape.gradient(loss, base.trainable_variables)
        optimizer.apply(grads, base.trainable_variables)
        return loss

    def one_epoch(epoch):
        radius.assign(EPSILON * min(1.0, (epoch + 1) / warmup_epochs) if warmup_epochs else EPSILON)
        for x, y in train:
            train_step(x, y)

    for epoch in range(epochs):
        recorder.epoch_done(timed_epoch(lambda epoch=epoch: one_epoch(epoch)))
        yield


def one_cycle(peak):
    """Wong et al.'s schedule: linear up to `peak` over the first half, down to 0 over the second."""

    def make(total_steps):
        half = max(1, total_steps // 2)

        class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
            def __call__(self, step):
                step = tf.cast(step, tf.float32)
                return tf.where(step < half, peak * step / half, peak * tf.maximum(0.0, 2.0 - step / half))

            def get_config(self):
                return {"peak": peak, "half": half}

        return OneCycle()

    return make


def run_nsl_legacy(base, x, y, recorder, epochs, workdir):
    """NSL's AdversarialRegularization under tf-keras in a subprocess, one epoch per request; a generator that
    yields after each epoch."""
    arrays, weights = pathlib.Path(workdir) / "train.npz", pathlib.Path(workdir) / "weights.npz"
    np.savez(arrays, x=x, y=y, **{f"w{i}": w for i, w in enumerate(base.get_weights())})
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    worker = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.time_to_robust_nsl_worker", str(arrays), str(weights), str(BATCH)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        if worker.stdout.readline().strip() != "ready":
            raise RuntimeError("the NSL legacy worker did not start; run it alone to see why")
        for _ in range(epochs):
            worker.stdin.write("epoch\n")
            worker.stdin.flush()
            seconds = float(worker.stdout.readline())
            with np.load(weights) as saved:
                base.set_weights([saved[f"w{i}"] for i in range(len(saved.files))])
            recorder.epoch_done(seconds)
            yield
    finally:
        worker.stdin.close()
        worker.wait(timeout=60)


def evaluation_digits(validation, pipeline, count):
    """(images, labels) of `count` validation digits spread over those the robustness monitor does not read.

    Validation digits only: recipe choices are made with this benchmark, and
    the test split is kept for the final figures (docs/results.md).
    """
    x, y = data.as_arrays(validation)
    rows = data.unmonitored_rows(len(y), pipeline.monitor_examples, count)
    return x[rows], y[rows].astype(np.int64)


def _same_precision_ratio(results, same, target, to_time, madry):
    """nsladv's time to Madry's float32 figure over Madry-style training in nsladv's precision (its own final
    time); the float32 ratio when both train in float32."""
    if to_time is None:
        return None
    if same is None:
        return round(to_time / madry["train_seconds"], 3)
    return round(to_time / results[same][-1]["train_seconds"], 3)


def time_to(points, target, key):
    """The `key` (train_seconds or passes) at the first epoch whose robust accuracy reaches `target`, or None."""
    return next((p[key] for p in points if p["robust"] >= target - 1e-9), None)


def plot(results, target, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    for name, points in results.items():
        for ax, key, label in ((axes[0], "train_seconds", "training time (s)"), (axes[1], "passes", "passes")):
            ax.plot(
                [0] + [p[key] for p in points], [0] + [100 * p["robust"] for p in points], marker="o", ms=3, label=name
            )
            ax.set_xlabel(label)
    for ax in axes:
        if target is not None:
            ax.axhline(100 * target, color="grey", ls=":", lw=1, label="Madry-style final")
        ax.set_ylabel(f"worst-case robust accuracy at L-inf {EPSILON:g} (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("Time to robustness on the standard MNIST (2 CPU cores)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/time_to_robust")
    parser.add_argument("--eval-examples", type=int, default=200)
    parser.add_argument("--nsladv-epochs", type=int, default=None, help="default: the pipeline's")
    parser.add_argument("--madry-epochs", type=int, default=8)
    parser.add_argument("--fgsm-epochs", type=int, default=10)
    parser.add_argument("--nsl-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pipeline", default="mnist", help="nsladv's recipe: a pipeline's name or file (default: mnist, harden's)"
    )
    parser.add_argument("--precision", default="auto", choices=precision_lib.PRECISIONS, help="nsladv's training")
    args = parser.parse_args()
    chosen = precision_lib.choose(args.precision)
    print(f"nsladv trains in {chosen.name} ({chosen.reason}); Madry-style training in float32", flush=True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    splits = data.load()
    x, y = data.as_arrays(splits.train)
    y = y.astype(np.int64)
    train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y), seed=args.seed).batch(BATCH).prefetch(2)
    steps_per_epoch = math.ceil(len(y) / BATCH)
    pipeline = nsladv.load_pipeline(args.pipeline)
    test = tf.data.Dataset.from_tensor_slices(evaluation_digits(splits.validation, pipeline, args.eval_examples))
    test = test.batch(200)
    keras.utils.set_random_seed(args.seed)
    initial = pipeline.build_model((28, 28, 1), 10).get_weights()

    def fresh(precision="float32"):
        keras.utils.set_random_seed(args.seed)
        with precision_lib.policy_scope(precision):
            base = pipeline.build_model((28, 28, 1), 10)
        base.set_weights(initial)
        return base

    passes = {"madry_pgd7": 8, "fgsm_rs": 2, "nsl_legacy": 3, "nsladv": pipeline.threat.steps + 2}
    monitor_data = data.as_arrays(data.spread(splits.validation, pipeline.monitor_examples))
    started = time.perf_counter()

    def madry(base, rec):
        return hand_written(
            base,
            train,
            steps_per_epoch,
            rec,
            args.madry_epochs,
            steps=7,
            step_size=0.1,
            schedule=lambda total: keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=total),
            warmup_epochs=3,
        )

    same = f"madry_pgd7_{chosen.name}" if chosen.name != "float32" else None
    contenders = [
        ("madry_pgd7", madry),
        *([(same, madry)] if same else []),
    ]
    if args.fgsm_epochs:
        contenders.append(
            (
                "fgsm_rs",
                lambda base, rec: hand_written(
                    base,
                    train,
                    steps_per_epoch,
                    rec,
                    args.fgsm_epochs,
                    steps=1,
                    step_size=1.25 * EPSILON,
                    schedule=one_cycle(5e-3),
                    warmup_epochs=3,
                ),
            )
        )
    if same:
        passes[same] = passes["madry_pgd7"]
    recorders = {
        name: Recorder(name, fresh(chosen if name in ("nsladv", same) else "float32"), test, passes[name], args.seed)
        for name in ("nsladv", *(name for name, _ in contenders), *(["nsl_legacy"] if args.nsl_epochs else []))
    }
    with tempfile.TemporaryDirectory() as workdir:
        # Interleaved epoch by epoch (nsladv, Madry, FGSM-RS, NSL, nsladv, ...), so a drift in the machine's speed
        # falls on every contender alike instead of on whichever ran last.
        others = [run(recorders[name].base, recorders[name]) for name, run in contenders]
        if args.nsl_epochs:
            others.append(
                run_nsl_legacy(recorders["nsl_legacy"].base, x, y, recorders["nsl_legacy"], args.nsl_epochs, workdir)
            )
        nsladv_epochs = args.nsladv_epochs or pipeline.epochs
        run_nsladv(
            recorders["nsladv"].base,
            train,
            steps_per_epoch,
            recorders["nsladv"],
            nsladv_epochs,
            monitor_data,
            others,
            pipeline=pipeline,
        )
        while others:  # the contenders with more epochs than nsladv, or all of them if nsladv stopped early
            advance(others)
    results = {name: recorder.points for name, recorder in recorders.items()}

    madry = results["madry_pgd7"][-1]
    target = madry["robust"]
    to_time, to_passes = (time_to(results["nsladv"], target, key) for key in ("train_seconds", "passes"))
    summary = {
        "nsladv_pipeline": args.pipeline,
        "target_robust_accuracy": target,
        "madry_train_seconds": madry["train_seconds"],
        "madry_passes": madry["passes"],
        "nsladv_seconds_to_target": to_time,
        "nsladv_passes_to_target": to_passes,
        "time_to_target_ratio": None if to_time is None else round(to_time / madry["train_seconds"], 3),
        "time_to_target_ratio_same_precision": _same_precision_ratio(results, same, target, to_time, madry),
        "precision": chosen.to_dict(),
        "passes_to_target_ratio": None if to_passes is None else round(to_passes / madry["passes"], 3),
        "final": {name: points[-1] for name, points in results.items()},
        "eval_examples": args.eval_examples,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    print(f"\n{'contender':<11} {'epochs':>6} {'train s':>8} {'passes':>6} {'clean':>7} {'robust':>7}")
    for name, points in results.items():
        last = points[-1]
        print(
            f"{name:<11} {last['epoch']:>6} {last['train_seconds']:>8.1f} {last['passes']:>6} "
            f"{100 * last['clean']:>6.1f}% {100 * last['robust']:>6.1f}%"
        )
    plot(results, target, out / "time_to_robust.png")
    (out / "time_to_robust.json").write_text(json.dumps({"summary": summary, "epochs": results}, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
