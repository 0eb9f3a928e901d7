"""The black-box retry: the examples only a black-box attack fooled, attacked again white-box, and the gradient
path check on those still hidden (a search miss, or masked gradients)."""

import numpy as np
import tensorflow as tf

from nsladv.robustness.apgd import APGD
from nsladv.robustness.base import AttackSettings
from nsladv.robustness.base import input_gradient
from nsladv.robustness.base import logits_of
from nsladv.robustness.base import wrong_classes_by_score
from nsladv.robustness.closest import Closest
from nsladv.robustness.fab import FAB
from nsladv.robustness.rows import radius_key
from nsladv.robustness.rows import robust_rows
from nsladv.settings_checks import integer

# What re-attacks the examples only a black-box attack fooled, in turn: gradient attacks that find them with more
# restarts were unlucky; gradient attacks that still cannot are what masked gradients look like. APGD-T on every
# target class comes second: on all 10,000 test digits it found the one digit APGD-CE's 20 restarts left. APGD-CE from
# output-diversified starts (ODI) comes next: its restarts set out in random output directions, not up the loss. FAB-T
# comes last: it walks the linearized boundary instead of climbing a loss, another route to what the loss surface hides.
BLACK_BOX_RETRY = (
    APGD(name="apgd-ce-x20", loss="ce", steps=100, restarts=20),
    APGD(name="apgd-t-9x20", loss="dlr-targeted", steps=100, target_classes=9, restarts=20),
    APGD(name="apgd-ce-odi-x20", loss="ce", steps=100, restarts=20, odi_steps=2),
    FAB(name="fab-t-9x5", steps=100, target_classes=9, restarts=5),
)


# The gradient path check on what the retry leaves hidden (see `gradient_path_check`): the black-box attack reruns
# (seeds `PATH_TRIES` apart) until it fools each example again, on at most `PATH_EXAMPLES` examples per radius; the
# gradients are read as the model's own when their integral along the path is within `PATH_RATIOS` of the actual fall.
PATH_TRIES = 10
PATH_EXAMPLES = 50
PATH_RATIOS = (0.5, 2.0)


def retry_attacks(retry):
    """The retry's attacks as a tuple (None: no retry)."""
    if retry is None:
        return None
    attacks = (retry,) if isinstance(retry, AttackSettings) else None
    if attacks is None and isinstance(retry, (list, tuple)):
        attacks = tuple(retry)
    if not attacks or not all(isinstance(a, AttackSettings) and not a.black_box for a in attacks):
        raise ValueError(
            "`black_box_retry` must be a white-box attack (an nsladv Attack, APGD or FAB), a non-empty sequence of "
            f"them, or None. Received: black_box_retry={retry!r}"
        )
    if any(isinstance(a, Closest) for a in attacks):
        raise ValueError(
            "The black-box retry runs on every example only a black-box attack fooled, so a `Closest` share has no "
            f"meaning there. Pass its attack instead. Received: black_box_retry={retry!r}"
        )
    names = [a.name for a in attacks]
    if len(set(names)) != len(names):
        raise ValueError(f"The retry's attacks need names of their own (reports key on them). Received: names {names}")
    return attacks


def retry(attacks, model, x, y, batch_size, hidden, epsilons, from_logits, seed):
    """`attacks` in turn on the examples only the black box fooled (`hidden`, by epsilon key): which they fool too.

    An attack whose loss needs more classes than the model has (APGD-T on a
    binary model) is left out, and the report says so (`skipped`); when none
    is left, that is all it says.
    """
    classes = int(model(x[:1], training=False).shape[-1])
    skipped = {
        a.name: f"needs at least {a.min_classes} classes; the model has {classes}"
        for a in attacks
        if a.min_classes > classes
    }
    attacks = [a for a in attacks if a.name not in skipped]
    if not attacks:
        return {"skipped": skipped}
    seeds = [seed + i for i in range(len(attacks))]
    retry = {
        "name": " + ".join(a.name for a in attacks),
        "attacks": [a.get_config() for a in attacks],
        "seeds": seeds,
        "examples": {},
        "found": {},
        "found_by": {a.name: {} for a in attacks},
        "hidden_examples": {},
    }
    if skipped:
        retry["skipped"] = skipped
    attackers = [a.batch_attacker(model, from_logits=from_logits, seed=s) for a, s in zip(attacks, seeds)]
    for epsilon in epsilons:
        key = radius_key(epsilon)
        rows = still = np.flatnonzero(hidden[key])
        for attack, attacker in zip(attacks, attackers):
            left = still[robust_rows(attacker, x, y, still, batch_size, epsilon)] if still.size else still
            retry["found_by"][attack.name][key] = int(still.size - left.size)
            still = left
        retry["examples"][key], retry["found"][key] = int(rows.size), int(rows.size - still.size)
        retry["hidden_examples"][key] = still.tolist()
    return retry


def gradient_path_check(model, x, y, x_adv, *, from_logits=True, points=21):
    """Whether the input gradients account for the margin's fall from x to x_adv, example by example.

    The margin is m = logit_y - logit_c, c the best wrong class at x_adv. Along
    v(t) = x + t (x_adv - x), m(x_adv) - m(x) is the integral over t in [0, 1]
    of grad m(v(t)) . (x_adv - x) for a model whose gradients are its own
    (the fundamental theorem of calculus); the integral is taken by the
    trapezoid rule over `points` points of the segment. A rounding layer, a
    gradient that no path carries (zero), or one replaced by another break
    the equality, while an attack that merely missed a point keeps it: the
    ratio of the gradient's prediction to the actual fall tells masked
    gradients from a search that did not find the point.

    Args:
        model: the Keras classifier.
        x, y: examples and their integer labels.
        x_adv: a point for each example that the model misclassifies.
        from_logits: what the model outputs (log-probabilities are used for probabilities).
        points: points of the segment (>= 2).

    Returns:
        One dict per example: `margin_clean`, `margin_adversarial`, `fall`
        (their difference), `gradient_fall` (the gradient's prediction of it),
        `ratio` (`gradient_fall / fall`; None when the margin does not fall)
        and `gradients_account` (the ratio within `PATH_RATIOS`).
    """
    integer("points", points, minimum=2)
    x, x_adv = np.asarray(x, np.float32), np.asarray(x_adv, np.float32)
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if x.shape != x_adv.shape or len(y) != len(x):
        raise ValueError(
            "x and x_adv need the same shape and one label per example. "
            f"Received: x {x.shape}, x_adv {x_adv.shape}, {len(y)} labels"
        )
    # The best wrong class (as in Square's margin, a tie with the label counts as fooled).
    (classes,) = wrong_classes_by_score(logits_of(model, tf.constant(x_adv), from_logits), tf.constant(y), 1)
    t = np.linspace(0.0, 1.0, points, dtype=np.float32).reshape([points] + [1] * (x.ndim - 1))
    checks = []
    for example, label, wrong in zip(range(len(y)), y, classes.numpy()):
        direction = x_adv[example] - x[example]
        path = tf.constant(x[example][None] + t * direction[None])

        def margin(logits, label=label, wrong=wrong):
            return logits[:, label] - logits[:, wrong]

        values, gradient, _ = input_gradient(model, path, from_logits, margin)
        slopes = np.sum(np.asarray(gradient).reshape(points, -1) * direction.reshape(1, -1), axis=1)
        gradient_fall = -float((slopes.sum() - 0.5 * (slopes[0] + slopes[-1])) / (points - 1))
        values = np.asarray(values)
        fall = float(values[0] - values[-1])
        ratio = gradient_fall / fall if fall > 0 else None
        checks.append(
            {
                "margin_clean": round(float(values[0]), 4),
                "margin_adversarial": round(float(values[-1]), 4),
                "fall": round(fall, 4),
                "gradient_fall": round(gradient_fall, 4),
                "ratio": None if ratio is None else round(ratio, 3),
                "gradients_account": ratio is not None and PATH_RATIOS[0] <= ratio <= PATH_RATIOS[1],
            }
        )
    return checks


def check_paths(retry, black_box, model, x, y, batch_size, epsilons, from_logits, seed):
    """`gradient_path_check` on the examples the retry left hidden, to points the black-box attack fools them at.

    Adds `path_checks` (by epsilon key, one entry per example checked: its
    position, and the check, or `"point": None` when the black-box attack
    did not fool it again in `PATH_TRIES` runs) and `path_examples_left` (the
    hidden examples past `PATH_EXAMPLES` that were not checked).
    """
    black_box = [a for a in black_box if a.gives_points]
    if "hidden_examples" not in retry or not black_box:
        return
    retry["path_checks"], retry["path_examples_left"] = {}, {}
    for epsilon in epsilons:
        key = radius_key(epsilon)
        hidden = np.asarray(retry["hidden_examples"][key], np.int64)
        rows, retry["path_examples_left"][key] = hidden[:PATH_EXAMPLES], int(max(hidden.size - PATH_EXAMPLES, 0))
        points = _black_box_points(black_box, model, x, y, rows, batch_size, epsilon, from_logits, seed)
        found = [i for i in rows.tolist() if i in points]
        checked = {}
        if found:
            adversarial = np.stack([points[i] for i in found])
            paths = gradient_path_check(model, x[found], y[found], adversarial, from_logits=from_logits)
            checked = dict(zip(found, paths))
        retry["path_checks"][key] = [{"example": i, **checked.get(i, {"point": None})} for i in rows.tolist()]


def _black_box_points(black_box, model, x, y, rows, batch_size, epsilon, from_logits, seed):
    """{row: a point that fools the model} from up to `PATH_TRIES` runs of each black-box attack (fresh seeds)."""
    points, left = {}, rows
    for index, attack in enumerate(black_box):
        for run in range(PATH_TRIES):
            if not left.size:
                return points
            attacker = attack.batch_attacker(model, from_logits=from_logits, seed=seed + 1000 * (index + 1) + run)
            for start in range(0, left.size, batch_size):
                chunk = left[start : start + batch_size]
                _, robust, adversarial = attacker.perturb(x[chunk], y[chunk], epsilon)
                points.update((int(i), a) for i, r, a in zip(chunk, robust, adversarial) if not r)
            left = np.array([i for i in left.tolist() if i not in points], np.int64)
    return points


def retry_reading(hidden, paths):
    """What the retry and the gradient path checks on what it left suggest, in words."""
    if hidden == 0:
        return "too few white-box restarts, not masked gradients"
    stays = f"{hidden} {'stays' if hidden == 1 else 'stay'} hidden from gradient attacks"
    if not paths:
        return f"{stays}: suspect masked gradients"
    ratios = [p["ratio"] for p in paths if p.get("gradients_account")]
    accounted = len(ratios)
    if accounted == hidden:
        low, high = f"{min(ratios):.2f}", f"{max(ratios):.2f}"
        return (
            f"{stays}, yet the input gradient accounts for the margin's fall along the black-box attack's path "
            f"(ratio {low if low == high else f'{low} to {high}'}, {accounted} of {hidden}): "
            "a search miss, not masked gradients"
        )
    return (
        f"{stays}: suspect masked gradients (the input gradient accounts for the margin's fall along "
        f"{accounted} of {len(paths)} black-box paths checked)"
    )
