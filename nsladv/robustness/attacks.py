"""White-box attacks on a classifier: FGSM and PGD with random restarts.

The attacks use the model being evaluated (never a transfer attack from
another model) and build their adversarial inputs through the same
`NeighborBuilder`, hence through NSL's `gen_adv_neighbor`.
"""

import dataclasses

import keras
import tensorflow as tf

from nsladv.configs import ThreatModel
from nsladv.configs import keyword_only
from nsladv.neighbors import NeighborBuilder


@keyword_only
@dataclasses.dataclass(frozen=True)
class Attack:
    """A white-box attack: FGSM (`steps=1`) or PGD (`steps>1`, random restarts).

    An example counts as robust only if the model classifies it correctly
    clean and after every restart.

    Args:
        name: label for reports (`"fgsm"`, `"pgd40"`, ...).
        norm: `"linf"` or `"l2"` (also `"l1"`).
        steps: gradient steps (1: FGSM from x, no random start).
        restarts: PGD restarts from random points of the ball (>= 1).
        step_size: step size relative to epsilon. Default: 1 for FGSM and
            2.5 / steps for PGD.
        clip_range: the valid input range, e.g. `(0, 1)` for images.
    """

    name: str = "pgd"
    norm: str = "linf"
    steps: int = 40
    restarts: int = 1
    step_size: object = None
    clip_range: object = (0.0, 1.0)

    def __post_init__(self):
        if not isinstance(self.restarts, int) or self.restarts < 1:
            raise ValueError(f"`restarts` must be an integer >= 1. Received: restarts={self.restarts!r}")
        if self.steps == 1 and self.restarts != 1:
            raise ValueError(
                f"FGSM (steps=1) starts from x and has nothing to restart. Received: restarts={self.restarts!r}"
            )
        self.builder()  # Validates norm, steps, step size and clip range.

    def builder(self):
        """A `NeighborBuilder` for epsilon 1: the radius is its call's `scale`."""
        threat = ThreatModel(
            epsilon=1.0, norm=self.norm, steps=self.steps, step_size=self.step_size, clip_range=self.clip_range
        )
        return NeighborBuilder(threat, random_start=self.steps > 1)

    def get_config(self):
        return dataclasses.asdict(self)


FGSM = Attack(name="fgsm", steps=1)


def pgd(steps=40, restarts=3, norm="linf", clip_range=(0.0, 1.0)):
    """The standard PGD evaluation attack (Madry et al.): 2.5 * eps / steps steps."""
    return Attack(name=f"pgd{steps}", norm=norm, steps=steps, restarts=restarts, clip_range=clip_range)


def classification_loss(from_logits):
    """Sum over the batch of the cross-entropy: each example's own gradient."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits, reduction="sum")
    return lambda y, pred: loss(y, tf.cast(pred, tf.float32))


def adversarial_examples(model, x, y, attack, epsilon, *, from_logits=True):
    """The attack's adversarial inputs for a batch (one random start).

    Args:
        model: a Keras classifier (outputs logits, or probabilities with
            `from_logits=False`).
        x: a batch of inputs; y: integer labels.
        attack: an `Attack`.
        epsilon: the radius (a float or a scalar tensor; 0 returns x).
        from_logits: what the model outputs.
    """
    loss = classification_loss(from_logits)
    return attack.builder()(
        x,
        model_fn=lambda v: model(v, training=False),
        loss_fn=lambda pred: loss(y, pred),
        scale=epsilon,
    )


class BatchAttacker:
    """Counts clean and robust correct predictions batch by batch, compiled once.

    Args:
        model: the Keras classifier under attack.
        attack: an `Attack`.
        from_logits: whether the model outputs logits.
    """

    def __init__(self, model, attack, *, from_logits=True):
        self.model = model
        self.attack = attack
        self.from_logits = from_logits
        self._step = tf.function(self._correct, reduce_retracing=True)

    def _correct(self, x, y, epsilon):
        y = tf.cast(tf.reshape(y, [-1]), tf.int64)
        clean = tf.argmax(self.model(x, training=False), axis=-1) == y
        robust = clean
        for _ in range(self.attack.restarts):
            x_adv = adversarial_examples(self.model, x, y, self.attack, epsilon, from_logits=self.from_logits)
            robust = robust & (tf.argmax(self.model(x_adv, training=False), axis=-1) == y)
        return tf.reduce_sum(tf.cast(clean, tf.int64)), tf.reduce_sum(tf.cast(robust, tf.int64))

    def accuracy(self, dataset, epsilon):
        """(clean accuracy, robust accuracy, examples) over a batched dataset."""
        clean = robust = total = 0
        for x, y in dataset:
            c, r = self._step(x, y, tf.constant(epsilon, tf.float32))
            clean, robust, total = clean + int(c), robust + int(r), total + int(tf.shape(y)[0])
        if total == 0:
            raise ValueError("The evaluation dataset is empty. Received: 0 examples")
        return clean / total, robust / total, total
