"""How long a harden job will take on this machine: its forward+backward passes, times a timed pass of its model.

Training and attacking a classifier is almost all forward and backward passes of the model. The job counts the
passes each phase makes per example (a PGD-k training step is k input-gradient steps, the clean step and the
neighbor's; APGD is its iterations times its restarts and targets; Square is its queries, forward only) and times
a few passes of the model itself on a batch, here, before it starts. Evaluation is counted as if every example
stayed robust to the end of the cascade for the hardened model (an upper bound) and as if a quarter survived the
first multi-step attack for the undefended one: the estimate is a planning figure, not a promise.

A pass timed on its own costs more than the same pass inside a compiled training step or attack loop, where
TensorFlow runs the passes back to back: `COMPILED_SHARE` is that ratio, read off the default job on 2 CPU cores
(its phases took 0.32-0.35 of their passes times the timed pass, docs/results.md).
"""

import dataclasses
import statistics
import time

import numpy as np
import tensorflow as tf

from nsladv.robustness.apgd import APGD
from nsladv.robustness.attacks import Attack
from nsladv.robustness.closest import Closest
from nsladv.robustness.fab import FAB
from nsladv.robustness.square import Square

# A forward pass alone costs about a third of a forward+backward one.
FORWARD_SHARE = 1 / 3
# What a pass costs inside a compiled step, as a share of the same pass timed on its own (see the docstring).
COMPILED_SHARE = 1 / 3
# The share of the examples an undefended model keeps after the first multi-step attack, for the estimate.
UNDEFENDED_SURVIVORS = 0.25
# FAB's step also projects onto the linearized boundary of every target: about two passes' work.
FAB_PASSES_PER_STEP = 2


@dataclasses.dataclass(frozen=True)
class PassTiming:
    """What one timed pass says: seconds an example's forward+backward pass takes, and seconds to trace one
    compiled function of the model (what each compiled training step or attack costs once, before it runs)."""

    per_example: float
    trace: float

    def seconds(self, passes, traces=0):
        return passes * self.per_example * COMPILED_SHARE + traces * self.trace


def time_passes(model, input_shape, *, batch_size=128, repeats=3):
    """Times the model's input gradient on a batch of random inputs: its first call (tracing) and the median of
    `repeats` calls after it."""
    x = tf.constant(np.random.default_rng(0).random((batch_size, *input_shape), np.float32))

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.cast(model(x, training=False), tf.float32))
        return tape.gradient(loss, x)

    start = time.perf_counter()
    step(x).numpy()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(x).numpy()
        times.append(time.perf_counter() - start)
    per_batch = statistics.median(times)
    return PassTiming(per_example=per_batch / batch_size, trace=max(0.0, first - per_batch))


def training_passes(pipeline, train_examples, validation_examples, *, adversarial, graph=False):
    """Forward+backward passes one model's training makes, summed over its epochs."""
    steps = pipeline.threat.steps if adversarial else 0
    per_example = 1 + (steps + 1 if adversarial else 0) + (pipeline.graph.regularization.max_neighbors if graph else 0)
    per_epoch = per_example * train_examples + FORWARD_SHARE * validation_examples
    if adversarial and pipeline.monitor_examples:
        per_epoch += (10 + 1) * min(pipeline.monitor_examples, validation_examples)  # the PGD-10 monitor
    return pipeline.epochs * per_epoch


def attack_passes(attack):
    """Forward+backward passes one attack makes per example at one radius."""
    if isinstance(attack, Closest):
        return attack.share * attack_passes(attack.attack)
    if isinstance(attack, Attack):
        return attack.threat.steps * attack.restarts
    if isinstance(attack, APGD):
        targets = attack.target_classes if attack.loss == "dlr-targeted" else 1
        return attack.steps * attack.restarts * targets
    if isinstance(attack, FAB):
        return FAB_PASSES_PER_STEP * attack.steps * attack.restarts * attack.target_classes
    if isinstance(attack, Square):
        return FORWARD_SHARE * attack.queries
    return 100  # an attack of the user's own: as long as one APGD run


def evaluation_passes(attacks, examples, radii, *, robust):
    """Passes of one model's evaluation: every attack on every example when `robust`, else the attacks after the
    first multi-step one on `UNDEFENDED_SURVIVORS` of the examples."""
    total, multi_step_seen = 0.0, False
    for attack in attacks:
        share = UNDEFENDED_SURVIVORS if multi_step_seen and not robust else 1.0
        total += attack_passes(attack) * examples * radii * share
        multi_step_seen = multi_step_seen or attack_passes(attack) > 1
    return total


# A phase's fixed start, in units of the timed function's tracing: a training traces its train and test steps
# (the wrapper's step holds the neighbor search) and its monitor's attack, and fills its data pipeline once; an
# attack traces its compiled step. Measured on the tiny pipeline on 2 CPU cores: about 25 s before a training's
# first epoch ran at speed and 1 s before an attack's first batch, against 0.16 s to trace the timed function.
TRAINING_TRACES = 150
TRACES_PER_ATTACK = 6


@dataclasses.dataclass(frozen=True)
class Phase:
    """One step of a job: what it does and its estimated seconds (None: nothing to do, an earlier run did it)."""

    title: str
    seconds: float = None


def plan(job, export, timing, evaluation_timing=None):
    """The phases of a harden job and their estimated seconds (None: done by an earlier run), from its timed pass
    (and the float32 copy's, `evaluation_timing`, where evaluation runs in another precision than training)."""
    evaluation_timing = evaluation_timing or timing
    pipeline, splits = job.pipeline, job.data.splits
    train = int(splits.train.cardinality()) if pipeline.train_examples is None else pipeline.train_examples
    validation = int(splits.validation.cardinality())
    tests = job.data.evaluated
    phases = []
    for label, graph, adversarial in job.contenders:
        passes = training_passes(pipeline, train, validation, adversarial=adversarial, graph=graph is not None)
        done = job.state.trained_seconds(label) is not None
        seconds = None if done else timing.seconds(passes, TRAINING_TRACES)
        phases.append(Phase(f"train the {job.titles[label]}", seconds))
    radii = len(pipeline.eval_epsilons)
    for label, _, _ in job.contenders:
        passes = evaluation_passes(pipeline.eval_attacks, tests, radii, robust=label != "baseline")
        done = job.state.evaluation(label) is not None
        traces = TRACES_PER_ATTACK * len(pipeline.eval_attacks)
        seconds = None if done else evaluation_timing.seconds(passes, traces)
        phases.append(Phase(f"evaluate the {label} model", seconds))
    phases.append(Phase("write the report, the plot and the model card", 1.0))
    if export:
        phases.append(Phase("export for TF Serving", None if job.state.export else 10.0))
    return phases
