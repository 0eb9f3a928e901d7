"""What every attack builds on: the settings protocol, the attackers' bookkeeping and seeds, and shared maths.

An attack is a frozen settings object (`AttackSettings`: `Attack` for FGSM and PGD, `APGD`, `FAB`, `Square`,
`Closest`) whose `batch_attacker(model)` makes the runner that attacks batches (a `Counter`).
"""

import dataclasses
import functools

import numpy as np
import tensorflow as tf

from nsladv.settings_checks import integer


class AttackSettings:
    """The protocol every attack's settings follow: a `name`, a JSON-ready `get_config()`, and
    `batch_attacker(model, *, from_logits, seed)`; `black_box` attacks use predictions only, and `min_classes` is
    the fewest classes a model needs for the attack's loss."""

    black_box = False
    min_classes = 2
    # Whether its attacker's `perturb(x, y, epsilon)` also returns the points it reached (the gradient path check
    # follows them).
    gives_points = False

    def batch_attacker(self, model, *, from_logits=True, seed=None):
        raise NotImplementedError


class LinfSettings(AttackSettings):
    """What the L-inf attacks that are plain settings (APGD, FAB, Square) share: their norm and config."""

    @property
    def norm(self):
        return "linf"

    def get_config(self):
        return dataclasses.asdict(self)


def attack_seed(seed=None):
    """An attacker's seed: `seed` itself, or one drawn from NumPy's global generator when None.

    Drawing keeps two attackers from sharing random starts (a stateful op's
    seed would come from its place in the traced graph, the same for two alike
    attacks), and `keras.utils.set_random_seed` still fixes them all.
    """
    if seed is None:
        return int(np.random.randint(2**31 - 1))
    return int(integer("seed", seed, minimum=0, numpy=True))


def random_starts(seed=None):
    """A random-start generator of its own for each attacker (see `attack_seed`)."""
    return tf.random.Generator.from_seed(attack_seed(seed))


def true_class_margin(logits, y):
    """Per example: the label's score minus the best other class's (<= 0 where the model is fooled or tied)."""
    logits = tf.cast(logits, tf.float32)
    y = tf.cast(tf.reshape(y, [-1]), tf.int64)
    label = tf.one_hot(y, tf.shape(logits)[-1], on_value=True, off_value=False)
    others = tf.where(label, tf.constant(-np.inf, tf.float32), logits)
    return tf.gather(logits, y, batch_dims=1) - tf.reduce_max(others, axis=-1)


class Counter:
    """Per-example clean and robust predictions over a dataset, and accuracies from them.

    Subclasses give `batch_masks(x, y, epsilon)`: two boolean vectors, correct
    clean and robust (correct clean and under every restart of the attack).
    Those that track how close they came to fooling each example also give
    `batch_margins` (see there).
    """

    def masks(self, dataset, epsilon):
        """(clean, robust) boolean NumPy arrays, one entry per example in dataset order."""
        return self._collect(dataset, epsilon, self.batch_masks)

    def masks_and_margins(self, dataset, epsilon):
        """(clean, robust, margin) NumPy arrays, one entry per example in dataset order (see `batch_margins`)."""
        return self._collect(dataset, epsilon, self.batch_margins)

    def batch_margins(self, x, y, epsilon):
        """`batch_masks`' two vectors and, per example, the smallest `true_class_margin` at the points the attack
        reached (NaN where the attacker does not track it, as here)."""
        clean, robust = self.batch_masks(x, y, epsilon)
        return clean, robust, tf.fill(tf.shape(clean), float("nan"))

    @staticmethod
    def _collect(dataset, epsilon, batch_fn):
        parts = []
        for x, y in dataset:
            parts.append([np.asarray(v) for v in batch_fn(x, tf.cast(tf.reshape(y, [-1]), tf.int64), epsilon)])
        if not parts or sum(len(p[0]) for p in parts) == 0:
            raise ValueError("The evaluation dataset is empty. Received: 0 examples")
        return tuple(np.concatenate(column) for column in zip(*parts))

    def accuracy(self, dataset, epsilon):
        """(clean accuracy, robust accuracy, examples) over a batched dataset."""
        clean, robust = self.masks(dataset, epsilon)
        return float(clean.mean()), float(robust.mean()), len(clean)


class SeededAttacker(Counter):
    """An attacker of `model` with `attack`'s settings and a random-start generator of its own (see `attack_seed`).

    Args:
        model: the Keras classifier under attack.
        attack: the attack's settings.
        from_logits: whether the model outputs logits.
        seed: fixes its random starts (None: drawn from NumPy's global generator).
    """

    def __init__(self, model, attack, *, from_logits=True, seed=None):
        self.model = model
        self.attack = attack
        self.from_logits = from_logits
        self.seed = attack_seed(seed)
        self._random = random_starts(self.seed)

    def reseed(self, seed):
        """Starts the random draws over from `seed` (the same draws as a fresh attacker's)."""
        self.seed = attack_seed(seed)
        self._random.reset_from_seed(self.seed)


def compiled(method):
    """`method` (a bound method) as a `tf.function` of its own, retraced only for a new input signature.

    TensorFlow counts traces per Python code object, so `tf.function(self.method)` on several attackers of one class
    (a cascade's APGD-CE and APGD-T, the retry's) pools their first traces and logs a warning of "excessive
    retracing" that is not there. A `functools.partial` has no code object of its own: TensorFlow counts its traces
    apart.
    """
    return tf.function(functools.partial(method), reduce_retracing=True)


def logits_of(model, x, from_logits):
    """The model's logits, float32 (log-probabilities for a model that outputs probabilities)."""
    out = tf.cast(model(x, training=False), tf.float32)
    return out if from_logits else tf.math.log(tf.clip_by_value(out, 1e-12, 1.0))


def input_gradient(model, x, from_logits, objective):
    """`objective(logits)` per example, the gradient of its sum with respect to x, and the logits (one forward and
    backward pass).

    No path from the input (a rounding first layer, say) gives a zero gradient, so an attack stays put. A reloaded
    SavedModel's gradient (through max pooling, say) loses the static batch size; it is restored, as the attacks' loop
    state must keep the shape it entered with (a batch of one would otherwise fail to trace).
    """
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = logits_of(model, x, from_logits)
        values = objective(logits)
        total = tf.reduce_sum(values)
    gradient = tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return values, tf.ensure_shape(gradient, x.shape), logits


def wrong_classes_by_score(logits, y, count):
    """The `count` highest-scoring classes other than y, best first: a list of [batch] int64 tensors (the targets
    of AutoAttack's targeted attacks; fewer when the model has fewer wrong classes)."""
    order = tf.cast(tf.argsort(logits, axis=-1, direction="DESCENDING", stable=True), tf.int64)
    wrong = tf.reshape(tf.boolean_mask(order, order != y[:, None]), [tf.shape(y)[0], -1])
    return [wrong[:, j] for j in range(min(count, int(wrong.shape[-1])))]
