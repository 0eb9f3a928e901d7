"""Adversarial neighbors x -> x' for any nested input structure, through NSL.

nsladv runs the projected-gradient loop; NSL's `gen_adv_neighbor` takes every
step (gradient, mask, steepest-ascent direction, step) and NSL's
`project_to_ball` projects back onto the L-inf / L2 ball around the clean
input. nsladv adds what NSL 1.4.0 lacks on this stack: a random start that
works with an unknown batch size inside `tf.function`, the L1 projection, one
epsilon per feature, and explicit handling of features that cannot be
perturbed. Array feature masks hold through the random start and the
projection; L1 steps choose among the coordinates that can still move under
the clip range; models that compute in float16 get their step directions
from a per-example normalized gradient (see `attack_objective`).

The maths runs in float32 in a scaled space z_f = x_f / epsilon_f, where the
ball has radius `scale` (1 at full strength; an epsilon warm-up lowers it).
"""

from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf

from nsladv import _nsl
from nsladv.configs import ThreatModel


def _key(path):
    return "/".join(str(p) for p in path)


def _feature_name(path):
    return _key(path) or "<input>"


def _is_float_dense(value):
    return isinstance(value, tf.Tensor) and value.dtype.is_floating


def _describe(value):
    if isinstance(value, tf.SparseTensor):
        return "a tf.SparseTensor"
    if isinstance(value, tf.RaggedTensor):
        return "a tf.RaggedTensor"
    dtype = getattr(value, "dtype", None)
    return f"of dtype {getattr(dtype, 'name', type(value).__name__)}"


def as_tensors(x):
    """`x` with NumPy arrays (as eager Keras steps may pass) made tensors."""
    return keras.tree.map_structure(lambda v: tf.convert_to_tensor(v) if isinstance(v, np.ndarray) else v, x)


def _flatten_inputs(x):
    """(paths, leaves) of the input structure; composite tensors stay whole."""
    flat = keras.tree.flatten_with_path(x)
    return [tuple(p) for p, _ in flat], [v for _, v in flat]


class NeighborBuilder:
    """Builds adversarial neighbors of a batch under a `ThreatModel`.

    Args:
        threat: the `ThreatModel`.
        random_start: whether the attack starts from a random point of the
            ball (resolved by the caller from the threat model and distance).

    Call it with the inputs `x`, `model_fn(x) -> predictions` and
    `loss_fn(predictions) -> scalar attack loss`; it returns x' with the
    structure and dtypes of x. `first_gradient` (the gradient of the attack
    loss at x, with the structure of `select(x)`) saves the first step's
    forward and backward pass.

    Example:

    >>> builder = NeighborBuilder(ThreatModel(epsilon=0.1), random_start=False)
    >>> x = tf.constant([[0.5, 0.5]])
    >>> x_adv = builder(x, model_fn=lambda v: v, loss_fn=lambda p: tf.reduce_sum(p))
    >>> x_adv.numpy().tolist()
    [[0.6000000238418579, 0.6000000238418579]]
    """

    def __init__(self, threat, *, random_start):
        if not isinstance(threat, ThreatModel):
            raise TypeError(f"Expected a nsladv.ThreatModel. Received: threat={threat!r}")
        self.threat = threat
        self.random_start = bool(random_start)

    # Structure -----------------------------------------------------------

    def select(self, x):
        """The float inputs to perturb, as `{path key: tensor}`.

        Raises:
            ValueError: if the feature mask (or per-feature epsilon or clip
                range) does not match the input structure, or asks to perturb
                a feature that is not a dense float tensor.
        """
        x = as_tensors(x)
        paths, leaves = _flatten_inputs(x)
        self._check_structure(x, paths)
        selected = {}
        for path, leaf in zip(paths, leaves):
            wanted = self._wanted(path)
            if wanted is False:
                continue
            if not _is_float_dense(leaf):
                if wanted is None:
                    continue  # Non-float inputs are never perturbed.
                raise ValueError(
                    f"Cannot perturb input {_feature_name(path)!r}: it is "
                    f"{_describe(leaf)}, and only dense floating-point inputs can "
                    "be perturbed. Set its `feature_mask` entry to False (or leave "
                    "it out of a per-feature `epsilon`). Received: feature_mask "
                    f"entry={self._mask_entry(path)!r} for input {_feature_name(path)!r}"
                )
            selected[_key(path)] = leaf
        return selected

    def _mask_entry(self, path):
        """The feature mask's entry for the input at `path` (None: no entry)."""
        mask = self.threat.feature_mask
        if mask is None:
            return None
        if isinstance(mask, Mapping):
            return mask.get(str(path[0])) if path else None
        for p in path:
            mask = mask[p]
        return mask

    def _wanted(self, path):
        """True/False when a setting names this input, None when left to dtype."""
        epsilon = self.threat.epsilon
        if isinstance(epsilon, Mapping) and (not path or str(path[0]) not in epsilon):
            return False
        entry = self._mask_entry(path)
        if entry is None:
            return True if isinstance(epsilon, Mapping) else None
        return entry if isinstance(entry, bool) else True

    def _check_structure(self, x, paths):
        names = sorted({str(p[0]) for p in paths if p})
        for setting in ("feature_mask", "epsilon", "clip_range"):
            value = getattr(self.threat, setting)
            if isinstance(value, Mapping):
                if not isinstance(x, Mapping):
                    raise ValueError(
                        f"`{setting}` is a mapping of feature names, so the model "
                        "inputs must be a dict. Received: inputs of type "
                        f"{type(x).__name__}, {setting} keys={sorted(value)}"
                    )
                unknown = sorted(set(value) - set(names))
                if unknown:
                    raise ValueError(
                        f"`{setting}` names features the inputs do not have: "
                        f"{unknown}. The inputs have {names}. "
                        f"Received: {setting} keys={sorted(value)}"
                    )
        mask = self.threat.feature_mask
        if mask is not None and not isinstance(mask, Mapping):
            try:
                tf.nest.assert_same_structure(
                    list(mask) if isinstance(mask, tuple) else mask,
                    list(x) if isinstance(x, tuple) else x,
                    check_types=False,
                )
            except (ValueError, TypeError):
                raise ValueError(
                    "`feature_mask` must have the structure of the model inputs "
                    "(one entry per input). Received: feature_mask with "
                    f"{_structure_summary(mask)} for inputs with "
                    f"{_structure_summary(x)}"
                ) from None

    # Maths ----------------------------------------------------------------

    def _per_feature(self, paths):
        """Epsilon, clip bounds and array masks of the selected inputs, by key."""
        eps, clip_lo, clip_hi, masks = {}, {}, {}, {}
        for path in paths:
            key = _key(path)
            epsilon = self.threat.epsilon
            eps[key] = epsilon[str(path[0])] if isinstance(epsilon, Mapping) else epsilon
            clip = self.threat.clip_range
            if isinstance(clip, Mapping):
                clip = clip.get(str(path[0])) if path else None
            if clip is not None:
                clip_lo[key], clip_hi[key] = clip
            entry = self._mask_entry(path)
            if entry is not None and not isinstance(entry, bool):
                masks[key] = tf.constant(np.asarray(entry, np.float32))
        return eps, clip_lo, clip_hi, masks

    def __call__(
        self, x, *, model_fn, loss_fn, first_gradient=None, epsilon_scale=1.0, radius=None, seed=None, fooled_fn=None
    ):
        """Returns the adversarial neighbor x' of `x`.

        Args:
            x: the inputs (a tensor, a list or a dict of tensors).
            model_fn: `x -> predictions`; called on neighbors.
            loss_fn: `predictions -> scalar` attack loss to maximize.
            first_gradient: optional gradient of the attack loss at `x`, as
                `{key: tensor}` for the keys of `select(x)`. Used for the first
                step when there is no random start.
            epsilon_scale: scalar (tensor) multiplying the threat's epsilon and
                step size: the fraction in force during a warm-up.
            radius: scalar (tensor) radius to use instead of the threat's
                epsilon, its step sizes scaled alike (an evaluation's radius);
                None: the threat's epsilon times `epsilon_scale`.
            seed: optional stateless seed (shape [2]) of the random start;
                None draws from TensorFlow's stateful random ops.
            fooled_fn: optional `predictions -> boolean vector`, which
                examples an iterate already achieves the attack's goal on.
                With it, each example gets the first iterate that fooled the
                model, not only the last one (an evaluation keeps its best
                iterate, as APGD does); the check reads the predictions each
                step computes anyway.
        """
        x = as_tensors(x)
        selected = self.select(x)
        if not selected:
            return x
        paths, leaves = _flatten_inputs(x)
        index = {_key(p): i for i, p in enumerate(paths)}
        eps, clip_lo, clip_hi, masks = self._per_feature([p for p in paths if _key(p) in selected])
        if radius is None:
            scale = tf.cast(epsilon_scale, tf.float32)
        else:
            scale = tf.cast(radius, tf.float32) / _scalar_epsilon(self.threat)
        norm = self.threat.norm
        step = scale * self.threat.relative_step_size()

        z0 = {k: tf.cast(v, tf.float32) / eps[k] for k, v in selected.items()}
        z_lo = {k: clip_lo[k] / eps[k] for k in clip_lo}
        z_hi = {k: clip_hi[k] / eps[k] for k in clip_hi}
        step_config = _nsl.adv_neighbor_config(
            norm=norm,
            step_size=step,
            feature_mask=masks or None,
            clip_min=z_lo or None,
            clip_max=z_hi or None,
        )

        def to_inputs(z, exact_clip=False):
            flat = list(leaves)
            for k, v in z.items():
                value = v * eps[k]
                if exact_clip and k in clip_lo:
                    value = tf.clip_by_value(value, clip_lo[k], clip_hi[k])
                flat[index[k]] = tf.cast(value, selected[k].dtype)
            return keras.tree.pack_sequence_as(x, flat)

        # Coordinates an array mask sets to 0 never move: the gradient mask
        # alone would leave them to the random start and the projection.
        frozen = {k: tf.cast(m > 0, tf.float32) for k, m in masks.items()}

        def project(z):
            delta = {k: z[k] - z0[k] for k in z}
            delta = {k: d * frozen[k] if k in frozen else d for k, d in delta.items()}
            delta = project_l1(delta, scale) if norm == "l1" else _nsl.project_to_ball(delta, scale, norm)
            return {k: _clip(z0[k] + delta[k], z_lo.get(k), z_hi.get(k)) for k in z}

        def ascend(z, gradients):
            # NSL takes the step from a linear loss whose gradient at z is
            # the given one (no further pass through the model).
            gradients = {k: tf.zeros_like(z[k]) if g is None else _finite(g) for k, g in gradients.items()}
            if norm == "l1" and z_lo:
                gradients = {k: _movable(g, z[k], z_lo.get(k), z_hi.get(k)) for k, g in gradients.items()}
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(z)
                linear = tf.add_n([tf.reduce_sum(tf.stop_gradient(gradients[k]) * z[k]) for k in z])
            z_next, _ = _nsl.gen_adv_neighbor(z, linear, step_config, gradient_tape=tape)
            return project(z_next)

        def pgd_step(z):
            """The next iterate, and the predictions at this one."""
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(z)
                predictions = model_fn(to_inputs(z))
                loss = attack_objective(predictions, loss_fn)
            return ascend(z, tape.gradient(loss, z)), predictions

        def step(state):
            """(iterate,) or, keeping the first iterate that fools, (iterate, kept, fooled so far)."""
            z, predictions = pgd_step(state[0])
            if fooled_fn is None:
                return (z,)
            _, kept, fooled = state
            newly = tf.logical_and(tf.reshape(fooled_fn(predictions), [-1]), tf.logical_not(fooled))
            kept = {k: tf.where(_expand(newly, v.shape.rank), state[0][k], v) for k, v in kept.items()}
            return z, kept, tf.logical_or(fooled, newly)

        remaining = self.threat.steps
        if self.random_start:
            noise = random_in_ball(z0, scale, norm, seed)
            noise = {k: r * masks[k] if k in masks else r for k, r in noise.items()}
            z = project({k: z0[k] + r for k, r in noise.items()})
        elif first_gradient is not None:
            z = ascend(z0, {k: first_gradient[k] * eps[k] for k in z0})  # d/dz = eps * d/dx
            remaining -= 1
        else:
            z = z0
        state = (z,) if fooled_fn is None else (z, z, tf.zeros([tf.shape(next(iter(z.values())))[0]], tf.bool))
        if remaining == 1:
            state = step(state)
        elif remaining > 1:
            _, state = tf.while_loop(lambda i, _: i < remaining, lambda i, s: (i + 1, step(s)), (tf.constant(0), state))
        z = state[0]
        if fooled_fn is not None:  # the last iterate for the examples no earlier one fooled
            z = {k: tf.where(_expand(state[2], v.shape.rank), state[1][k], v) for k, v in z.items()}
        return to_inputs(z, exact_clip=True)


def attack_objective(predictions, loss_fn):
    """The loss whose input gradient gives each example's ascent direction.

    In float32 it is `loss_fn(predictions)`. When the model computes in
    float16, that loss's gradient underflows to 0 for confidently classified
    examples on its way back through the model (no loss scaling here), so the
    attack would leave them untouched. Every step direction (sign, L2 or L1
    steepest ascent) depends on each example's gradient only up to a positive
    factor, and each example's loss depends on its own predictions only: the
    objective is then the linearized loss whose gradient at the predictions is
    each example's gradient divided by its largest magnitude (computed in
    float32), so that what travels back through float16 layers is at most 1.
    """
    leaves = keras.tree.flatten(predictions)
    if not any(getattr(v, "dtype", None) == tf.float16 for v in leaves):
        return tf.cast(loss_fn(predictions), tf.float32)
    wide = [tf.cast(v, tf.float32) for v in leaves]
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(wide)
        loss = tf.cast(loss_fn(keras.tree.pack_sequence_as(predictions, wide)), tf.float32)
    grads = [tf.zeros_like(w) if g is None else g for g, w in zip(tape.gradient(loss, wide), wide)]
    largest = tf.reduce_max(
        tf.stack([tf.reduce_max(tf.abs(tf.reshape(g, [tf.shape(g)[0], -1])), axis=1) for g in grads]), axis=0
    )
    inverse = tf.math.divide_no_nan(1.0, largest)
    return tf.add_n(
        [tf.reduce_sum(tf.stop_gradient(g * _expand(inverse, g.shape.rank)) * w) for g, w in zip(grads, wide)]
    )


def _movable(gradient, z, lo, hi):
    """The gradient with coordinates that sit at the clip bound it points to zeroed.

    NSL's L1 step moves only the coordinate of largest |gradient|; when that
    coordinate sits at the bound, the clipped step would be exactly zero at
    every step. The steepest feasible L1 step is the largest coordinate among
    those that can move.
    """
    if lo is None:
        return gradient
    blocked = ((gradient > 0) & (z >= hi)) | ((gradient < 0) & (z <= lo))
    return tf.where(blocked, tf.zeros_like(gradient), gradient)


def _finite(gradient):
    gradient = tf.cast(gradient, tf.float32)
    return tf.where(tf.math.is_finite(gradient), gradient, tf.zeros_like(gradient))


def _clip(value, lo, hi):
    return value if lo is None else tf.clip_by_value(value, lo, hi)


def _structure_summary(value):
    if isinstance(value, Mapping):
        return f"keys {sorted(value)}"
    if isinstance(value, (list, tuple)):
        return f"{len(value)} entries"
    return "a single entry"


def _per_example(tensors, fn):
    """Per-example reduction across all tensors of `{key: [batch, ...]}`."""
    parts = [fn(tf.reshape(t, [tf.shape(t)[0], -1])) for t in tensors.values()]
    return parts


def _expand(vector, rank):
    return tf.reshape(vector, [-1] + [1] * (rank - 1))


class _Draws:
    """Random draws: TensorFlow's stateful ops, or stateless ones from a seed (shape [2]) when given one."""

    def __init__(self, seed=None):
        self.seed = seed
        self._count = 0

    def _next(self):
        self._count += 1
        return tf.random.experimental.stateless_fold_in(self.seed, self._count)

    def uniform(self, shape, low, high, dtype):
        if self.seed is None:
            return tf.random.uniform(shape, low, high, dtype)
        return tf.random.stateless_uniform(shape, self._next(), low, high, dtype)

    def normal(self, shape, dtype):
        if self.seed is None:
            return tf.random.normal(shape, dtype=dtype)
        return tf.random.stateless_normal(shape, self._next(), dtype=dtype)

    def gamma(self, shape, alpha, beta, dtype):
        if self.seed is None:
            return tf.random.gamma(shape, alpha, beta, dtype=dtype)
        return tf.random.stateless_gamma(shape, self._next(), alpha, beta, dtype=dtype)


def random_in_ball(tensors, radius, norm, seed=None):
    """Uniform random points of the norm ball, one per example of the batch.

    The same sampling as `nsl.lib.random_in_norm_ball` (Barthe et al. 2005:
    the first n coordinates of a uniform point of the p-sphere in R^(n+p)
    are uniform in the p-ball of R^n), written with dynamic shapes because
    NSL 1.4.0 uses static shapes and fails inside `tf.function` when the batch
    size is unknown. With a `seed` (shape [2]) the draws are stateless: the
    seed alone decides them.
    """
    draw = _Draws(seed)
    if norm == "linf":
        return {k: draw.uniform(tf.shape(t), -1.0, 1.0, t.dtype) * radius for k, t in tensors.items()}
    batch = tf.shape(next(iter(tensors.values())))[0]
    if norm == "l2":
        samples = {k: draw.normal(tf.shape(t), t.dtype) for k, t in tensors.items()}
        total = tf.add_n(_per_example(samples, lambda v: tf.reduce_sum(tf.square(v), axis=1)))
        extra = draw.gamma([batch], 1.0, 0.5, total.dtype)
        scale = radius / tf.sqrt(total + extra)
    else:
        samples = {
            k: draw.gamma(tf.shape(t), 1.0, 1.0, t.dtype) - draw.gamma(tf.shape(t), 1.0, 1.0, t.dtype)
            for k, t in tensors.items()
        }
        total = tf.add_n(_per_example(samples, lambda v: tf.reduce_sum(tf.abs(v), axis=1)))
        extra = draw.gamma([batch], 1.0, 1.0, total.dtype)
        scale = radius / (total + extra)
    return {k: v * _expand(scale, v.shape.rank) for k, v in samples.items()}


def project_l1(deltas, radius):
    """Projects each example of `{key: [batch, ...]}` onto the L1 ball.

    NSL's `project_to_ball` has no L1 case. This is the exact Euclidean
    projection of Duchi et al. (2008), over all tensors jointly: soft
    thresholding by the theta that brings the L1 norm down to `radius`.
    """
    keys = list(deltas)
    flat = [tf.reshape(deltas[k], [tf.shape(deltas[k])[0], -1]) for k in keys]
    sizes = [tf.shape(f)[1] for f in flat]
    joined = tf.concat(flat, axis=1)
    radius = tf.cast(radius, joined.dtype)
    magnitude = tf.abs(joined)
    sorted_desc = tf.sort(magnitude, axis=1, direction="DESCENDING")
    cumulative = tf.cumsum(sorted_desc, axis=1)
    ranks = tf.cast(tf.range(1, tf.shape(joined)[1] + 1), joined.dtype)
    positive = sorted_desc - (cumulative - radius) / ranks > 0
    rho = tf.maximum(tf.reduce_sum(tf.cast(positive, tf.int32), axis=1), 1)
    theta = (tf.gather(cumulative, rho - 1, batch_dims=1) - radius) / tf.cast(rho, joined.dtype)
    inside = tf.reduce_sum(magnitude, axis=1) <= radius
    theta = tf.where(inside, tf.zeros_like(theta), theta)
    projected = tf.sign(joined) * tf.maximum(magnitude - theta[:, None], 0.0)
    pieces = tf.split(projected, sizes, axis=1)
    return {k: tf.reshape(p, tf.shape(deltas[k])) for k, p in zip(keys, pieces)}


def _scalar_epsilon(threat):
    """The threat's epsilon as one number (a radius replaces it: per-feature epsilons scale from their largest)."""
    epsilon = threat.epsilon
    if hasattr(epsilon, "values"):
        return float(max(epsilon.values()))
    return float(epsilon)
