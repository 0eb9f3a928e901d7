"""White-box attacks on a classifier: FGSM and PGD with random restarts.

The attacks use the model being evaluated (never a transfer attack from
another model) and build their adversarial inputs through the same
`NeighborBuilder`, hence through NSL's `gen_adv_neighbor`.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from nsladv.configs import ThreatModel
from nsladv.neighbors import NeighborBuilder


@dataclasses.dataclass(frozen=True, kw_only=True)
class Attack:
    """A white-box attack: a threat model at unit radius, and how often to restart it.

    The radius comes with each evaluation (`BatchAttacker.accuracy(dataset,
    epsilon)`), so `threat` has epsilon 1 and its step size is a fraction of
    the radius. FGSM is one step from x; PGD starts from random points of the
    ball, and an example counts as robust only if the model classifies it
    correctly clean and at every iterate of every restart.

    Args:
        name: label for reports (`"fgsm"`, `"pgd40"`, ...).
        threat: a `ThreatModel` with `epsilon=1.0` (norm, steps, step size
            as a fraction of the radius, random start, clip range).
        restarts: random restarts (>= 1; 1 for an attack without a random
            start).

    Make the usual ones with `fgsm(...)` and `pgd(...)`.
    """

    name: str = "pgd"
    threat: ThreatModel = dataclasses.field(
        default_factory=lambda: ThreatModel(epsilon=1.0, steps=40, random_start=True, clip_range=(0.0, 1.0))
    )
    restarts: int = 1

    def __post_init__(self):
        if not isinstance(self.threat, ThreatModel) or self.threat.epsilon != 1.0:
            raise ValueError(
                "An Attack's threat model has epsilon 1 (the radius comes with each evaluation). "
                f"Received: threat={self.threat!r}"
            )
        if not isinstance(self.restarts, int) or isinstance(self.restarts, bool) or self.restarts < 1:
            raise ValueError(f"`restarts` must be an integer >= 1. Received: restarts={self.restarts!r}")
        if not self.threat.uses_random_start() and self.restarts != 1:
            name = "FGSM (steps=1)" if self.threat.steps == 1 else "An attack without a random start"
            raise ValueError(f"{name} starts from x and has nothing to restart. Received: restarts={self.restarts!r}")

    @property
    def norm(self):
        return self.threat.norm

    def builder(self):
        """A `NeighborBuilder` whose `epsilon_scale` is the radius (the threat's epsilon is 1)."""
        return NeighborBuilder(self.threat, random_start=self.threat.uses_random_start())

    def get_config(self):
        return {"name": self.name, "restarts": self.restarts, "threat": self.threat.get_config()}

    def batch_attacker(self, model, *, from_logits=True, seed=None):
        """The compiled runner `evaluate_robustness` uses (`nsladv.robustness.APGD` has one too).

        `seed` fixes its random starts (None: drawn from NumPy's global generator).
        """
        return BatchAttacker(model, self, from_logits=from_logits, seed=seed)


def fgsm(*, norm="linf", clip_range=(0.0, 1.0), name="fgsm"):
    """The fast gradient (sign) method: one step of the full radius from x."""
    return Attack(name=name, threat=ThreatModel(epsilon=1.0, norm=norm, steps=1, clip_range=clip_range))


def pgd(steps=40, restarts=3, *, norm="linf", clip_range=(0.0, 1.0), relative_step_size=None, name=None):
    """The standard PGD evaluation attack (Madry et al.): random starts, steps of 2.5 * radius / steps."""
    threat = ThreatModel(
        epsilon=1.0, norm=norm, steps=steps, step_size=relative_step_size, random_start=steps > 1, clip_range=clip_range
    )
    return Attack(name=name or f"pgd{steps}", threat=threat, restarts=restarts)


FGSM = fgsm()


def classification_loss(from_logits):
    """Sum over the batch of the cross-entropy: each example's own gradient."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits, reduction="sum")
    return lambda y, pred: loss(y, tf.cast(pred, tf.float32))


def adversarial_examples(model, x, y, attack, epsilon, *, from_logits=True, seed=None):
    """The attack's adversarial inputs for a batch (one random start).

    Args:
        model: a Keras classifier (outputs logits, or probabilities with
            `from_logits=False`).
        x: a batch of inputs; y: integer labels.
        attack: an `Attack`.
        epsilon: the radius (a float or a scalar tensor; 0 returns x).
        from_logits: what the model outputs.
        seed: optional stateless seed (shape [2]) of the random start.

    Each example gets the first iterate that fools the model (its starting
    point included: x itself for one the model gets wrong clean, as
    AutoAttack returns it), else the last one: robust means robust at every
    iterate.
    """
    loss = classification_loss(from_logits)
    return attack.builder()(
        x,
        model_fn=lambda v: model(v, training=False),
        loss_fn=lambda pred: loss(y, pred),
        epsilon_scale=epsilon,
        seed=seed,
        fooled_fn=lambda pred: tf.argmax(pred, axis=-1) != tf.reshape(tf.cast(y, tf.int64), [-1]),
    )


class LinfSettings:
    """What the L-inf attacks that are plain settings (APGD, Square) share: their norm and config."""

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
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"An attack's seed must be an integer >= 0 or None. Received: seed={seed!r}")
    return int(seed)


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


class BatchAttacker(SeededAttacker):
    """Runs an `Attack` batch by batch, compiled once.

    Args:
        model: the Keras classifier under attack.
        attack: an `Attack`.
        from_logits: whether the model outputs logits.
    """

    def __init__(self, model, attack, *, from_logits=True, seed=None):
        super().__init__(model, attack, from_logits=from_logits, seed=seed)
        self._step = tf.function(self._correct, reduce_retracing=True)

    def _correct(self, x, y, epsilon):
        clean = tf.argmax(self.model(x, training=False), axis=-1) == y
        robust = clean
        seeds = self._random.make_seeds(self.attack.restarts)
        for restart in range(self.attack.restarts):
            x_adv = adversarial_examples(
                self.model, x, y, self.attack, epsilon, from_logits=self.from_logits, seed=seeds[:, restart]
            )
            robust = robust & (tf.argmax(self.model(x_adv, training=False), axis=-1) == y)
        return clean, robust

    def reseed(self, seed):
        """Starts the random starts over from `seed` (the same starts as a fresh attacker's)."""
        self.seed = attack_seed(seed)
        self._random.reset_from_seed(self.seed)

    def batch_masks(self, x, y, epsilon):
        return self._step(x, y, tf.constant(epsilon, tf.float32))
