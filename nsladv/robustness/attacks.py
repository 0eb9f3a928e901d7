"""White-box attacks on a classifier: FGSM and PGD with random restarts.

The attacks use the model being evaluated (never a transfer attack from
another model) and build their adversarial inputs through the same
`NeighborBuilder`, hence through NSL's `gen_adv_neighbor`.
"""

import dataclasses

import keras
import tensorflow as tf

from nsladv.configs import ThreatModel
from nsladv.neighbors import NeighborBuilder
from nsladv.robustness.base import AttackSettings
from nsladv.robustness.base import SeededAttacker
from nsladv.robustness.base import compiled
from nsladv.settings_checks import integer


@dataclasses.dataclass(frozen=True, kw_only=True)
class Attack(AttackSettings):
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
        integer("restarts", self.restarts)
        if not self.threat.uses_random_start() and self.restarts != 1:
            name = "FGSM (steps=1)" if self.threat.steps == 1 else "An attack without a random start"
            raise ValueError(f"{name} starts from x and has nothing to restart. Received: restarts={self.restarts!r}")

    @property
    def norm(self):
        return self.threat.norm

    def builder(self):
        """A `NeighborBuilder` of the attack's steps; each call gives it the radius."""
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
        radius=epsilon,
        seed=seed,
        fooled_fn=lambda pred: tf.argmax(pred, axis=-1) != tf.reshape(tf.cast(y, tf.int64), [-1]),
    )


class BatchAttacker(SeededAttacker):
    """Runs an `Attack` batch by batch, compiled once.

    Args:
        model: the Keras classifier under attack.
        attack: an `Attack`.
        from_logits: whether the model outputs logits.
    """

    def __init__(self, model, attack, *, from_logits=True, seed=None):
        super().__init__(model, attack, from_logits=from_logits, seed=seed)
        self._step = compiled(self._correct)

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

    def batch_masks(self, x, y, epsilon):
        return self._step(x, y, tf.constant(epsilon, tf.float32))
