"""The targeted Fast Adaptive Boundary attack, FAB-T (Croce & Hein, 2020), L-inf: AutoAttack's third attack.

FAB looks for the smallest perturbation that crosses the decision boundary
between the true class y and a target class t, rather than for a high loss
inside the ball. From x_0 = x (or a random point near x on a restart), each
iteration linearizes the logit difference f(v) = z_t(v) - z_y(v) at the
current point v and projects both v and the original x onto the hyperplane
where that linearization is zero, inside the input box:

    d_v, d_x = P(v), P(x)            (the smallest L-inf steps onto the hyperplane)
    alpha    = min(|d_v| / (|d_v| + |d_x|), alpha_max)
    v        = clip((1 - alpha) * (v + eta * d_v) + alpha * (x + eta * d_x))

and, when v is misclassified, remembers ||v - x||_inf if it is the smallest
so far and steps back towards x (v = x + beta * (v - x)). An example counts as
fooled at a radius when some misclassified iterate lies within it. Each run
targets one of the `target_classes` highest-scoring wrong classes, as
AutoAttack's FAB-T does (100 iterations, alpha_max 0.1, eta 1.05, beta 0.9,
one run per target).

Since FAB moves along the linearized boundary instead of climbing a loss, it
is a different route to the same examples than APGD: what it finds that
APGD missed is a sign of a loss surface that misleads gradient ascent.
"""

import dataclasses

import tensorflow as tf

from nsladv.robustness.base import LinfSettings
from nsladv.robustness.base import SeededAttacker
from nsladv.robustness.base import compiled
from nsladv.robustness.base import input_gradient
from nsladv.robustness.base import logits_of as _logits
from nsladv.robustness.base import wrong_classes_by_score
from nsladv.settings_checks import integer


@dataclasses.dataclass(frozen=True, kw_only=True)
class FAB(LinfSettings):
    """The targeted FAB attack, L-inf.

    Args:
        name: label for reports.
        steps: iterations per run (AutoAttack: 100).
        target_classes: how many of the highest-scoring wrong classes to
            target in turn (AutoAttack: 9).
        restarts: runs per target; the first starts from x, the others from
            random points (as AutoAttack's FAB does).
        alpha_max: the largest weight of the step from x (AutoAttack: 0.1).
        eta: the overshoot of each projection (AutoAttack: 1.05).
        beta: the step back towards x after a success (AutoAttack: 0.9).
        clip_range: the valid input range.
    """

    name: str = "fab-t"
    steps: int = 100
    target_classes: int = 9
    restarts: int = 1
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9
    clip_range: tuple = (0.0, 1.0)

    def __post_init__(self):
        for field in ("steps", "target_classes", "restarts"):
            value = getattr(self, field)
            integer(field, value)
        for field, low, high in (("alpha_max", 0.0, 1.0), ("beta", 0.0, 1.0)):
            value = getattr(self, field)
            if not low <= value <= high:
                raise ValueError(f"`{field}` must be in [{low}, {high}]. Received: {field}={value!r}")
        if not self.eta >= 1.0:
            raise ValueError(f"`eta` (the overshoot) must be >= 1. Received: eta={self.eta!r}")

    @property
    def min_classes(self):
        return 2

    def batch_attacker(self, model, *, from_logits=True, seed=None):
        return FABAttacker(model, self, from_logits=from_logits, seed=seed)


def fab_t(steps=100, target_classes=9):
    """FAB-T as AutoAttack runs it: 100 iterations, one run per target, the 9 highest wrong classes."""
    return FAB(steps=steps, target_classes=target_classes)


def project_linf(points, normals, offsets, clip_range=(0.0, 1.0)):
    """The smallest L-inf steps that take each point onto its hyperplane without leaving the box.

    For a point t (a row of `points`, flat), a normal w and an offset b, the
    step d of least max |d_i| with w . (t + d) = b and t + d inside
    `clip_range`. With a budget lam, coordinate i can move by at most
    min(lam, room_i) towards the hyperplane (room_i: its distance to the
    bound in the direction sign(w_i) points), so the reachable change of
    w . t is g(lam) = sum_i |w_i| min(lam, room_i), piecewise linear in lam;
    the answer is the smallest lam with g(lam) = |b - w . t|, found between
    the sorted rooms. When the box cannot reach the hyperplane, every
    coordinate goes to its bound (the closest the box gets). Coordinates
    with w_i = 0 do not move.

    Args:
        points, normals: [batch, dims] float tensors.
        offsets: [batch].
        clip_range: the box.

    Returns:
        The steps, [batch, dims].
    """
    lo, hi = clip_range
    needed = offsets - tf.reduce_sum(normals * points, axis=1)
    direction = tf.where(needed < 0, -1.0, 1.0)[:, None] * tf.sign(normals)  # where each coordinate should move
    needed = tf.abs(needed)
    weights = tf.abs(normals)
    room = tf.maximum(tf.where(direction > 0, hi - points, points - lo), 0.0)
    room = tf.where(weights > 0, room, 0.0)
    order = tf.argsort(room, axis=1)
    rooms = tf.gather(room, order, batch_dims=1)
    sorted_weights = tf.gather(weights, order, batch_dims=1)
    # Before the k-th smallest room: the change from the coordinates already at their bound, and the weight of the
    # rest, which move by lam together.
    capped = tf.math.cumsum(sorted_weights * rooms, axis=1, exclusive=True)
    moving = tf.math.cumsum(sorted_weights, axis=1, reverse=True)
    reach = capped + rooms * moving  # g at each room, non-decreasing
    first = tf.searchsorted(reach, needed[:, None], side="left")[:, 0]  # the first room at which g reaches it
    dims = tf.shape(points)[1]
    feasible = first < dims
    at = tf.minimum(first, dims - 1)
    budget = tf.math.divide_no_nan(
        needed - tf.gather(capped, at[:, None], batch_dims=1)[:, 0], tf.gather(moving, at[:, None], batch_dims=1)[:, 0]
    )
    budget = tf.where(feasible, budget, tf.reduce_max(room, axis=1))
    return direction * tf.minimum(budget[:, None], room)


class FABAttacker(SeededAttacker):
    """Runs a `FAB` attack batch by batch, compiled once; counts clean and robust predictions.

    An example is robust at a radius when it is classified correctly clean
    and no misclassified iterate of any target's run lies within the radius.
    """

    def __init__(self, model, attack, *, from_logits=True, seed=None):
        super().__init__(model, attack, from_logits=from_logits, seed=seed)
        self._run = compiled(self._distances)

    def _difference(self, x, y, target):
        """z_target - z_y at x and its input gradient (one forward and backward pass)."""
        difference, gradient, _ = input_gradient(
            self.model,
            x,
            self.from_logits,
            lambda logits: tf.gather(logits, target, batch_dims=1) - tf.gather(logits, y, batch_dims=1),
        )
        return difference, gradient

    def _distances(self, x, y, target, start_radius, seed):
        """Per example, the L-inf distance of the closest misclassified iterate (infinity when none is)."""
        attack = self.attack
        lo, hi = attack.clip_range
        x = tf.cast(x, tf.float32)
        batch = tf.shape(x)[0]
        flat_x = tf.reshape(x, [batch, -1])
        rank_ones = [1] * (x.shape.rank - 1)
        # A restart starts from a random point at half the radius (AutoAttack's FAB); the first from x (radius 0).
        noise = tf.random.stateless_uniform(tf.shape(x), seed, -1.0, 1.0)
        largest = tf.reshape(tf.reduce_max(tf.abs(tf.reshape(noise, [batch, -1])), axis=1), [-1, *rank_ones])
        start = tf.clip_by_value(x + 0.5 * start_radius * noise / largest, lo, hi)
        infinity = tf.fill([batch], float("inf"))

        def body(k, v, best):
            difference, gradient = self._difference(v, y, target)
            normal = tf.reshape(gradient, [batch, -1])
            flat_v = tf.reshape(v, [batch, -1])
            offset = tf.reduce_sum(normal * flat_v, axis=1) - difference  # the linearization is 0 on w . u = b
            steps = project_linf(
                tf.concat([flat_v, flat_x], 0), tf.concat([normal, normal], 0), tf.concat([offset, offset], 0), (lo, hi)
            )
            from_v, from_x = steps[:batch], steps[batch:]
            size_v = tf.maximum(tf.reduce_max(tf.abs(from_v), axis=1), 1e-8)
            size_x = tf.maximum(tf.reduce_max(tf.abs(from_x), axis=1), 1e-8)
            alpha = tf.minimum(size_v / (size_v + size_x), attack.alpha_max)[:, None]
            flat_next = (1.0 - alpha) * (flat_v + attack.eta * from_v) + alpha * (flat_x + attack.eta * from_x)
            v_next = tf.clip_by_value(tf.reshape(flat_next, tf.shape(x)), lo, hi)
            wrong = tf.argmax(_logits(self.model, v_next, self.from_logits), -1, output_type=y.dtype) != y
            distance = tf.reduce_max(tf.abs(tf.reshape(v_next - x, [batch, -1])), axis=1)
            best = tf.where(wrong, tf.minimum(best, distance), best)
            # After a success, step back towards x: the boundary is searched from closer in.
            v_next = tf.where(tf.reshape(wrong, [-1, *rank_ones]), x + attack.beta * (v_next - x), v_next)
            # The loop state keeps the shapes it entered with (a reloaded SavedModel's outputs lose the batch size).
            return k + 1, tf.ensure_shape(v_next, x.shape), tf.ensure_shape(best, infinity.shape)

        _, _, best = tf.while_loop(lambda k, *_: k < attack.steps, body, (tf.constant(0), start, infinity))
        return best

    def distances(self, x, y, epsilon):
        """Per example: the smallest L-inf distance of a misclassified iterate over every target and run."""
        y = tf.cast(tf.reshape(y, [-1]), tf.int64)
        targets = wrong_classes_by_score(_logits(self.model, x, self.from_logits), y, self.attack.target_classes)
        best = tf.fill(tf.shape(y), float("inf"))
        for target in targets:
            for restart in range(self.attack.restarts):
                seed = self._random.make_seeds(1)[:, 0]
                radius = tf.constant(0.0 if restart == 0 else epsilon, tf.float32)
                best = tf.minimum(best, self._run(x, y, target, radius, seed))
        return best

    def batch_masks(self, x, y, epsilon):
        y = tf.cast(tf.reshape(y, [-1]), tf.int64)
        right = tf.argmax(_logits(self.model, x, self.from_logits), -1) == y
        return right, right & (self.distances(x, y, epsilon) > epsilon)
