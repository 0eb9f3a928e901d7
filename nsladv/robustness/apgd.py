"""Auto-PGD (Croce & Hein, 2020): the step-size-free PGD at the core of AutoAttack, L-inf.

For each example, from x_0 (a random point of the ball, or x):

    x_1     = P(x_0 + eta * sign(grad f(x_0)))
    z       = P(x_k + eta * sign(grad f(x_k)))
    x_{k+1} = P(x_k + alpha * (z - x_k) + (1 - alpha) * (x_k - x_{k-1})),  alpha = 0.75

where P projects onto the epsilon ball around x and the clip range, and eta
starts at 2 * epsilon. At checkpoints w_j (p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), w_j = ceil(p_j * N), spaced as
the reference implementation spaces them), eta halves and the iterate goes
back to the best point so far when the loss rose in fewer than 75% of the steps
since the last checkpoint, or when eta did not change at the last checkpoint
and the best loss did not improve since. An example counts as fooled when any
iterate misclassifies it (the best iterate is kept, never only the last).

With `odi_steps` > 0 the start is diversified first (Output Diversified
Initialization, Tashiro et al., 2020): `odi_steps` steps of epsilon along the
sign of the gradient of w . logits, w uniform in [-1, 1] per example and
restart, each projected. Restarts from such starts head for different output
directions rather than for the loss's nearest ascent, which reaches pockets of
the ball a random start almost never lands in.

Losses: `"ce"` (cross-entropy, APGD-CE) and `"dlr-targeted"` (the targeted
difference-of-logits ratio, APGD-T, run once per target among the
`target_classes` highest-scoring wrong classes).
"""

import dataclasses

import tensorflow as tf

from nsladv.robustness.base import LinfSettings
from nsladv.robustness.base import SeededAttacker
from nsladv.robustness.base import compiled
from nsladv.robustness.base import input_gradient
from nsladv.robustness.base import logits_of as _logits
from nsladv.robustness.base import true_class_margin
from nsladv.robustness.base import wrong_classes_by_score
from nsladv.settings_checks import integer

LOSSES = ("ce", "dlr-targeted")


@dataclasses.dataclass(frozen=True, kw_only=True)
class APGD(LinfSettings):
    """An Auto-PGD attack, L-inf.

    Args:
        name: label for reports (`"apgd-ce"`, `"apgd-t"`).
        loss: `"ce"` or `"dlr-targeted"`.
        steps: iterations per run (AutoAttack: 100).
        restarts: runs from fresh random starts (per target for APGD-T).
        target_classes: for `"dlr-targeted"`, how many of the highest-scoring
            wrong classes to target in turn (AutoAttack: 9).
        random_start: start from a random point of the ball (as AutoAttack
            does); False starts from x.
        odi_steps: steps of Output Diversified Initialization from that start
            (0: none; Tashiro et al. use 2), each a fresh direction per restart.
        clip_range: the valid input range.
    """

    name: str = "apgd-ce"
    loss: str = "ce"
    steps: int = 100
    restarts: int = 1
    target_classes: int = 9
    random_start: bool = True
    odi_steps: int = 0
    clip_range: tuple = (0.0, 1.0)

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"Unknown APGD loss. Expected one of {list(LOSSES)}. Received: loss={self.loss!r}")
        integer("odi_steps", self.odi_steps, minimum=0)
        for field in ("steps", "restarts", "target_classes"):
            value = getattr(self, field)
            integer(field, value)

    @property
    def min_classes(self):
        """The fewest classes the loss works with: the targeted DLR loss compares the top four scores."""
        return 4 if self.loss == "dlr-targeted" else 2

    def batch_attacker(self, model, *, from_logits=True, seed=None):
        return APGDAttacker(model, self, from_logits=from_logits, seed=seed)


def apgd_ce(steps=100, restarts=1):
    """APGD with the cross-entropy loss, AutoAttack's first attack."""
    return APGD(name="apgd-ce", loss="ce", steps=steps, restarts=restarts)


def apgd_t(steps=100, target_classes=9):
    """APGD with the targeted DLR loss over the top wrong classes, AutoAttack's second attack."""
    return APGD(name="apgd-t", loss="dlr-targeted", steps=steps, target_classes=target_classes)


def checkpoints(steps):
    """The iterations after which APGD checks its progress (the reference implementation's spacing)."""
    length = max(int(0.22 * steps), 1)
    shrink, shortest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    found, at = [], length - 1
    while at < steps:
        found.append(at)
        length = max(length - shrink, shortest)
        at += length
    return found


def per_example_loss(loss, logits, y, target=None):
    """APGD's losses, one value per example (to maximize)."""
    if loss == "ce":
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    ordered = tf.sort(logits, axis=-1, direction="DESCENDING")
    true = tf.gather(logits, y, batch_dims=1)
    wanted = tf.gather(logits, target, batch_dims=1)
    scale = ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12
    return -(true - wanted) / scale


class APGDAttacker(SeededAttacker):
    """Runs an `APGD` attack batch by batch, compiled once; counts clean and robust predictions.

    An example is robust only if it is classified correctly clean and no
    iterate of any restart (or target) misclassifies it.
    """

    def __init__(self, model, attack, *, from_logits=True, seed=None):
        super().__init__(model, attack, from_logits=from_logits, seed=seed)
        self._check = [int(k) for k in checkpoints(attack.steps)]
        self._run = compiled(self._fooled)

    def _gradient(self, x, y, target):
        return input_gradient(
            self.model, x, self.from_logits, lambda logits: per_example_loss(self.attack.loss, logits, y, target)
        )

    def _diversified(self, x0, epsilon, project, seed):
        """ODI's start: `odi_steps` projected steps of epsilon along sign(grad (w . logits)), one w per example.

        w is drawn statelessly from `seed` and the logits' shape, so every step draws the same w.
        """

        def weighted(logits):
            return tf.reduce_sum(tf.random.stateless_uniform(tf.shape(logits), seed, -1.0, 1.0) * logits, axis=-1)

        for _ in range(self.attack.odi_steps):
            _, gradient, _ = input_gradient(self.model, x0, self.from_logits, weighted)
            x0 = project(x0 + epsilon * tf.sign(gradient))
        return x0

    def _fooled(self, x, y, epsilon, target, seed):
        """Whether any iterate misclassifies each example, the first such iterate (else the best-loss one), and the
        smallest `true_class_margin` over its iterates (how close the run came to fooling it)."""
        attack = self.attack
        lo, hi = attack.clip_range
        x = tf.cast(x, tf.float32)
        rank_ones = [1] * (x.shape.rank - 1)
        low, high = tf.maximum(x - epsilon, lo), tf.minimum(x + epsilon, hi)

        def project(v):
            return tf.clip_by_value(v, low, high)

        if attack.random_start:
            noise = tf.random.stateless_uniform(tf.shape(x), seed, -1.0, 1.0)
            largest = tf.reduce_max(tf.abs(tf.reshape(noise, [tf.shape(x)[0], -1])), axis=1)
            x0 = project(x + epsilon * noise / tf.reshape(largest, [-1, *rank_ones]))
        else:
            x0 = x
        if attack.odi_steps:
            # Its own stream, so the random start is the same with and without ODI.
            x0 = self._diversified(x0, epsilon, project, tf.random.fold_in(seed, 1))
        loss, grad, logits = self._gradient(x0, y, target)
        fooled = tf.argmax(logits, -1, output_type=y.dtype) != y
        found = x0
        closest = true_class_margin(logits, y)
        batch = tf.shape(x)[0]
        eta = tf.fill([batch], 2.0 * tf.cast(epsilon, tf.float32))
        state = {
            "x": x0,
            "previous": x0,
            "grad": grad,
            "loss": loss,
            "best": x0,
            "best_loss": loss,
            "best_grad": grad,
            "fooled": fooled,
            "found": found,
            "closest": closest,
            "eta": eta,
            "rises": tf.zeros([batch], tf.int32),
            "last_best": loss,
            "halved_last": tf.ones([batch], tf.bool),
        }
        is_check = tf.constant([k in self._check for k in range(attack.steps)])
        lengths = tf.constant(_lengths(self._check, attack.steps), tf.int32)

        def expand(v):
            return tf.reshape(v, [-1, *rank_ones])

        def body(k, s):
            step = expand(s["eta"]) * tf.sign(s["grad"])
            z = project(s["x"] + step)
            alpha = tf.where(k > 0, 0.75, 1.0)
            x_next = project(s["x"] + alpha * (z - s["x"]) + (1.0 - alpha) * (s["x"] - s["previous"]))
            loss, grad, logits = self._gradient(x_next, y, target)
            wrong = tf.argmax(logits, -1, output_type=y.dtype) != y
            newly = wrong & ~s["fooled"]
            found = tf.where(expand(newly), x_next, s["found"])
            fooled = s["fooled"] | wrong
            rises = s["rises"] + tf.cast(loss > s["loss"], tf.int32)
            better = loss > s["best_loss"]
            best = tf.where(expand(better), x_next, s["best"])
            best_grad = tf.where(expand(better), grad, s["best_grad"])
            best_loss = tf.where(better, loss, s["best_loss"])
            s = dict(
                s,
                x=x_next,
                previous=s["x"],
                grad=grad,
                loss=loss,
                best=best,
                best_loss=best_loss,
                best_grad=best_grad,
                fooled=fooled,
                found=found,
                closest=tf.minimum(s["closest"], true_class_margin(logits, y)),
                rises=rises,
            )
            return k + 1, tf.cond(is_check[k], lambda: _checkpoint(s, lengths[k], expand), lambda: s)

        def going(k, s):
            # Once every example of the batch is fooled, no later iterate changes the answer: stop there.
            return (k < attack.steps) & ~tf.reduce_all(s["fooled"])

        _, state = tf.while_loop(going, body, (tf.constant(0), state))
        found = tf.where(expand(state["fooled"]), state["found"], state["best"])
        return state["fooled"], found, state["closest"]

    def fooled(self, x, y, epsilon):
        """Per example: fooled by any restart (and target), as a bool tensor."""
        return self.fooled_and_margin(x, y, epsilon)[0]

    def fooled_and_margin(self, x, y, epsilon):
        """Per example: fooled by any restart (and target), and the smallest `true_class_margin` any iterate of any
        of them reached."""
        y = tf.cast(tf.reshape(y, [-1]), tf.int64)
        epsilon = tf.constant(epsilon, tf.float32)
        targets = [None]
        if self.attack.loss == "dlr-targeted":
            logits = _logits(self.model, x, self.from_logits)
            if logits.shape[-1] < self.attack.min_classes:
                raise ValueError(
                    "The targeted DLR loss compares the top four scores: it needs at least 4 classes. "
                    f"Received: {logits.shape[-1]} classes"
                )
            targets = wrong_classes_by_score(logits, y, self.attack.target_classes)
        fooled = tf.zeros_like(y, tf.bool)
        closest = tf.fill(tf.shape(y), tf.constant(float("inf")))
        for target in targets:
            for _ in range(self.attack.restarts):
                seed = self._random.make_seeds(1)[:, 0]  # drawn either way: later batches get the same seeds
                if bool(tf.reduce_all(fooled)):
                    continue  # nothing left to fool in this batch
                run, _, margin = self._run(x, y, epsilon, y if target is None else target, seed)
                fooled, closest = fooled | run, tf.minimum(closest, margin)
        return fooled, closest

    def batch_masks(self, x, y, epsilon):
        return self.batch_margins(x, y, epsilon)[:2]

    def batch_margins(self, x, y, epsilon):
        right = tf.argmax(_logits(self.model, x, self.from_logits), -1) == y
        fooled, closest = self.fooled_and_margin(x, y, epsilon)
        return right, right & ~fooled, closest


def _lengths(check, steps):
    """For each iteration, the number of steps since the previous checkpoint (used at checkpoints)."""
    lengths, previous = [0] * steps, -1
    for at in check:
        lengths[at] = at - previous
        previous = at
    return lengths


def _checkpoint(s, length, expand):
    """Halve eta (and go back to the best point) where the loss stalled since the last checkpoint."""
    oscillating = tf.cast(s["rises"], tf.float32) <= 0.75 * tf.cast(length, tf.float32)
    stalled = ~s["halved_last"] & (s["last_best"] >= s["best_loss"])
    halve = oscillating | stalled
    x = tf.where(expand(halve), s["best"], s["x"])
    grad = tf.where(expand(halve), s["best_grad"], s["grad"])
    return dict(
        s,
        x=x,
        grad=grad,
        eta=tf.where(halve, s["eta"] / 2.0, s["eta"]),
        rises=tf.zeros_like(s["rises"]),
        last_best=s["best_loss"],
        halved_last=halve,
    )
