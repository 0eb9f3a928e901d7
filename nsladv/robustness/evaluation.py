"""Robust accuracy at an epsilon grid, with gradient-masking sanity checks."""

import dataclasses
import functools
import math
import time

import numpy as np
import tensorflow as tf

from nsladv.classifier import check_classifier
from nsladv.errors import DataError
from nsladv.robustness.apgd import APGD
from nsladv.robustness.apgd import apgd_ce
from nsladv.robustness.apgd import apgd_t
from nsladv.robustness.attacks import FGSM
from nsladv.robustness.attacks import Attack
from nsladv.robustness.attacks import fgsm
from nsladv.robustness.attacks import input_gradient
from nsladv.robustness.attacks import logits_of
from nsladv.robustness.attacks import pgd
from nsladv.robustness.attacks import true_class_margin
from nsladv.robustness.attacks import wrong_classes_by_score
from nsladv.robustness.fab import FAB
from nsladv.robustness.fab import fab_t
from nsladv.robustness.inputs import evaluation_arrays
from nsladv.robustness.inputs import output_classes
from nsladv.robustness.inputs import parse_radii
from nsladv.robustness.result import RobustnessResult
from nsladv.robustness.square import Square

# Accuracy differences within this are read as equal (a few examples of 1,000).
TOLERANCE = 0.005


@dataclasses.dataclass(frozen=True, kw_only=True)
class Closest:
    """A white-box attack run again only where the attacks before it came closest to fooling the model.

    In `evaluate_robustness` the examples still robust are ranked by the
    smallest margin (the label's logit minus the best other's) that any
    white-box attack before this one reached at them (APGD tracks it over
    its iterates; an example none tracked ranks by its clean margin), and
    `attack` runs on the closest `share` of them (at least one): many
    restarts where more tries pay most, for about the cost of one restart on
    them all. On the default MNIST model the examples only the black-box
    Square fools are among the closest few percent (docs/results.md).

    Args:
        attack: a white-box attack (APGD, FAB or an nsladv `Attack`),
            typically with many restarts.
        share: the fraction of the still-robust examples it runs on, in (0, 1].
        name: label for reports (default: the attack's name + "-closest").
    """

    attack: object
    share: float = 0.05
    name: str = None

    def __post_init__(self):
        if not hasattr(self.attack, "batch_attacker") or _black_box(self.attack) or isinstance(self.attack, Closest):
            raise ValueError(
                "`Closest` re-runs a white-box attack (APGD, FAB or an nsladv Attack). "
                f"Received: attack={self.attack!r}"
            )
        if isinstance(self.share, bool) or not isinstance(self.share, (int, float)) or not 0 < self.share <= 1:
            raise ValueError(f"`share` must be a fraction in (0, 1]. Received: share={self.share!r}")
        if self.name is None:
            object.__setattr__(self, "name", f"{self.attack.name}-closest")

    def get_config(self):
        return {"name": self.name, "share": self.share, "attack": self.attack.get_config()}

    def batch_attacker(self, model, *, from_logits=True, seed=None):
        return self.attack.batch_attacker(model, from_logits=from_logits, seed=seed)

    def rows(self, candidates, margins):
        """The closest `share` of `candidates` (row indices), smallest margin first."""
        count = max(1, math.ceil(round(self.share * candidates.size, 9))) if candidates.size else 0
        return candidates[np.argsort(margins[candidates], kind="stable")[:count]]


# Named attack sets, weakest to strongest. Each starts with FGSM and one multi-step attack on every example
# (the gradient-masking checks compare them) and ends with the black-box Square on what is still robust.
ATTACK_SETS = {
    "quick": lambda: (FGSM, pgd(20, 1), apgd_ce(steps=50)),
    # AutoAttack's gradient attacks at full length, APGD-T on the 3 most likely wrong classes, then APGD-CE with 20
    # restarts on the 5% of the examples left that came closest to being fooled (where the digits only Square fooled
    # were, docs/results.md; about one more APGD-CE run's cost), a shorter Square.
    "standard": lambda: (
        FGSM,
        apgd_ce(),
        apgd_t(target_classes=3),
        Closest(attack=APGD(name="apgd-ce-x20", restarts=20), share=0.05),
        Square(queries=1000),
    ),
    # AutoAttack's standard version: APGD-CE, APGD-T (9 target classes), FAB-T (9) and Square (5,000 queries).
    "full": lambda: (FGSM, apgd_ce(), apgd_t(target_classes=9), fab_t(target_classes=9), Square(queries=5000)),
}


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


def attack_set(name, *, norm="linf", clip_range=(0.0, 1.0), num_classes=None):
    """A fresh tuple of the named attack set's attacks (`"quick"`, `"standard"` or `"full"`; see `ATTACK_SETS`).

    Args:
        name: the set.
        norm: `"linf"` (the sets as listed) or `"l2"`: APGD, FAB and Square are
            L-inf attacks here, so the L2 sets are FGSM and PGD (`quick`:
            PGD-20; `standard`: PGD-40 with 3 restarts and PGD-100 with 5);
            AutoAttack's `full` set has no L2 version here.
        clip_range: the valid input range every attack keeps to.
        num_classes: the model's classes: targeted attacks aim at no more
            than `num_classes - 1` target classes.
    """
    if name not in ATTACK_SETS:
        raise ValueError(f"Unknown attack set. Expected one of {list(ATTACK_SETS)}. Received: attacks={name!r}")
    clip = tuple(float(c) for c in clip_range)
    if norm == "l2":
        if name == "full":
            raise ValueError(
                "AutoAttack's standard version ('full') is L-inf here (APGD, FAB and Square are L-inf attacks). "
                "Use attacks='standard' for L2 (FGSM and PGD with restarts). Received: attacks='full', norm='l2'"
            )
        chosen = (fgsm(norm="l2", clip_range=clip), pgd(20, 1, norm="l2", clip_range=clip))
        if name == "standard":
            chosen = (chosen[0], pgd(40, 3, norm="l2", clip_range=clip), pgd(100, 5, norm="l2", clip_range=clip))
        return chosen
    if norm != "linf":
        raise ValueError(f"Attack sets are for norm 'linf' or 'l2'. Received: norm={norm!r}")
    return fit_attacks(ATTACK_SETS[name](), clip_range=clip, num_classes=num_classes)


def fit_attacks(attacks, *, clip_range=(0.0, 1.0), num_classes=None):
    """`attacks` fitted to a model: clipped to its input range, no more target classes than it has wrong ones, and
    without the attacks whose loss needs more classes than it has (APGD-T's targeted DLR loss needs 4)."""
    clip = tuple(float(c) for c in clip_range)
    usable = [a for a in attacks if num_classes is None or _min_classes(a) <= num_classes]
    return tuple(_fitted(a, clip, num_classes) for a in usable)


def _min_classes(attack):
    return _min_classes(attack.attack) if isinstance(attack, Closest) else getattr(attack, "min_classes", 2)


def _fitted(attack, clip_range, num_classes):
    """`attack` with `clip_range`, and no more target classes than a model of `num_classes` has wrong ones."""
    if isinstance(attack, Closest):
        return dataclasses.replace(attack, attack=_fitted(attack.attack, clip_range, num_classes))
    if isinstance(attack, Attack):
        return dataclasses.replace(attack, threat=attack.threat.replace(clip_range=clip_range))
    changes = {"clip_range": clip_range}
    targets = getattr(attack, "target_classes", None)
    if num_classes is not None and targets is not None and targets > num_classes - 1:
        changes["target_classes"] = max(1, num_classes - 1)
    return dataclasses.replace(attack, **changes)


def evaluate_robustness(
    model,
    dataset,
    *,
    epsilons,
    attacks="standard",
    from_logits=None,
    large_epsilon=None,
    near_zero=0.1,
    progress=None,
    step_progress=None,
    seed=0,
    cascade=True,
    black_box_retry=BLACK_BOX_RETRY,
):
    """White-box robust accuracy of `model` on `dataset` at each epsilon.

    The attacks run in the given order, black-box ones (Square) last. With
    `cascade` (AutoAttack's way, what makes strong attacks affordable) an
    attack runs only on the examples every attack before it left robust,
    except the reference attacks, which run on every example so that the
    gradient-masking checks have independent figures to compare: the first
    attack, every single-step one (FGSM), and the first multi-step white-box
    one. An attack that ran on every example reports its own `accuracy`;
    every attack reports how many examples it `attacked` and `fooled`.

    Args:
        model: the Keras classifier (the model being evaluated is the one
            attacked).
        dataset: the examples: arrays `(x, y)`, a `tf.data.Dataset` of
            `(x, y)` (batched, or not), or a data source's name or path (its
            test split; see `nsladv.datasets.resolve`). It is read once (into
            memory), then attacked in batches (a batched dataset's own size,
            else 500).
        epsilons: a radius > 0 or a list of them (`"8/255"` reads as 8/255).
        attacks: an attack set's name (`"quick"`, `"standard"` (default),
            `"full"`; see `attack_set`), or a sequence of `Attack`s, `APGD`s,
            `FAB`s, `Closest`s or `Square`s. A `Closest` runs only on the share
            of the examples robust so far that the white-box attacks before it
            came closest to fooling.
        from_logits: whether the model outputs logits; None (default) tells
            from the model (a softmax layer, or outputs that are
            probabilities).
        large_epsilon: a radius large enough to destroy any image (e.g. 0.5
            for L-inf on [0, 1]); the strongest reference white-box attack
            must drive accuracy below `near_zero` there, else gradients are
            masked.
        near_zero: the accuracy threshold of that check.
        progress: called as `progress(attack name, epsilon, robust accuracy
            after it, seconds)` after each attack at each epsilon.
        step_progress: called as `step_progress(attack name, epsilon,
            examples attacked so far, examples to attack)` after each batch of
            an attack at an epsilon (and once with 0 before the first), for a
            progress bar with an estimate of the time left.
        seed: the attacks' random seeds are `seed`, `seed + 1`, ... in run
            order (reported under each attack's `seed`).
        cascade: False runs every attack on every example.
        black_box_retry: white-box attacks run again, in turn, on the
            examples that only a black-box attack fooled, each on those the
            ones before did not fool (default `BLACK_BOX_RETRY`: APGD-CE with
            20 restarts, APGD-T on 9 target classes with 20, APGD-CE from 20
            output-diversified starts, FAB-T on 9 targets with 5), reported as `black_box_retry`:
            whether gradients find them with more tries (too few restarts) or
            not (masked gradients), which each attack found (`found_by`) and
            which none did (`hidden_examples`), and for those whether the
            input gradient accounts for the margin's fall along the black-box
            attack's path to them (`path_checks`; see `gradient_path_check`):
            a search miss, or masking. It changes no accuracy. One attack or a
            sequence; None skips it.

    Returns:
        A `RobustnessResult`: a JSON-ready dict with `clean_accuracy`, `examples` (also as
        `test_examples`), per attack its `config`, `seed`, `attacked` and
        `fooled` counts by epsilon and (when it ran on every example) its
        `accuracy` by epsilon; `worst_case` by epsilon (the share of examples
        correct clean and under every attack and restart, counted example by
        example: never the minimum of the per-attack accuracies),
        `black_box_only` and `black_box_only_examples` (how many and which
        examples, by position in `dataset`, only a black-box attack fooled),
        `after_each_attack` (the worst case after the first 1, 2, ...
        attacks, in run order), `confidence_95` (the Wilson interval of the
        worst case), `seconds` by attack, and `sanity` checks (see
        `sanity_checks`). `worst_case_at(epsilon)` reads the worst case,
        `write_card(path)` writes a Markdown card.

    Example:

    >>> result = nsladv.evaluate_robustness(model, (x_test, y_test), epsilons=0.3)
    >>> result.worst_case_at(0.3)
    """
    epsilons = parse_radii(epsilons)
    x, y, batch_size = evaluation_arrays(dataset)
    classes = output_classes(model, x)
    if y.max() >= classes:
        raise DataError(
            f"Labels must be class ids below the model's {classes} outputs. Received: labels up to {int(y.max())}"
        )
    if from_logits is None:
        from_logits = not check_classifier(model, x.shape[1:], classes)
    if isinstance(attacks, str):
        attacks = attack_set(attacks, num_classes=classes)
    attacks = list(attacks)
    if not attacks:
        raise ValueError("`attacks` must name an attack set or list at least one attack. Received: attacks=[]")
    names = [a.name for a in attacks]
    if len(set(names)) != len(names):
        raise ValueError(f"Every attack needs a name of its own (reports key on it). Received: names {names}")
    attacks = [a for a in attacks if not _black_box(a)] + [a for a in attacks if _black_box(a)]
    black_box_retry = _retry_attacks(black_box_retry)  # checked before the attacks run, which can take hours
    clean, margins = _clean_margins(model, x, y, batch_size, from_logits)
    reference = _reference_attacks(attacks) if cascade else set(range(len(attacks)))
    results = {"epsilons": epsilons, "attacks": {}, "seconds": {}, "clean_accuracy": float(clean.mean())}
    results["examples"] = results["test_examples"] = len(y)
    robust_so_far = {_key(e): clean for e in epsilons}  # examples robust to every attack so far
    white_box = {}  # epsilon key -> examples robust to every white-box attack
    closest = {_key(e): margins.copy() for e in epsilons}  # the smallest margin any white-box attack reached
    curves = {_key(e): [] for e in epsilons}
    attackers = {}
    for index, attack in enumerate(attacks):
        attackers[attack.name] = attacker = attack.batch_attacker(model, from_logits=from_logits, seed=seed + index)
        start = time.perf_counter()
        entry = {"config": attack.get_config(), "seed": seed + index, "attacked": {}, "fooled": {}}
        if index in reference:
            entry["accuracy"] = {}
        for epsilon in epsilons:
            key = _key(epsilon)
            started = time.perf_counter()
            attackable = clean if index in reference else robust_so_far[key]
            if isinstance(attack, Closest):
                rows, robust = attack.rows(np.flatnonzero(attackable), closest[key]), attackable.copy()
            else:
                rows, robust = np.flatnonzero(attackable), np.zeros_like(clean)
            if rows.size:
                report = None if step_progress is None else functools.partial(step_progress, attack.name, epsilon)
                robust[rows], reached = _attack_rows(attacker, x, y, rows, batch_size, epsilon, report)
                if not _black_box(attack):
                    closest[key][rows] = np.fmin(closest[key][rows], reached)
            entry["attacked"][key], entry["fooled"][key] = int(rows.size), int(rows.size - robust[rows].sum())
            if index in reference:
                entry["accuracy"][key] = float(robust.mean())
            robust_so_far[key] = robust & robust_so_far[key]
            if not _black_box(attack):
                white_box[key] = robust & white_box.get(key, clean)
            curves[key].append(float(robust_so_far[key].mean()))
            if progress is not None:
                progress(attack.name, epsilon, curves[key][-1], time.perf_counter() - started)
        results["attacks"][attack.name] = entry
        results["seconds"][attack.name] = round(time.perf_counter() - start, 3)
    run_order = [a.name for a in attacks]
    results["worst_case"] = {key: float(mask.mean()) for key, mask in robust_so_far.items()}
    results["after_each_attack"] = {key: dict(zip(run_order, curve)) for key, curve in curves.items()}
    results["confidence_95"] = {key: wilson_interval(int(mask.sum()), len(mask)) for key, mask in robust_so_far.items()}
    if white_box and any(_black_box(a) for a in attacks):
        # Examples a black-box attack fooled that every white-box attack left robust.
        hidden = {key: white_box[key] & ~robust_so_far[key] for key in robust_so_far}
        results["black_box_only"] = {key: int(mask.sum()) for key, mask in hidden.items()}
        results["black_box_only_examples"] = {key: np.flatnonzero(mask).tolist() for key, mask in hidden.items()}
        if black_box_retry is not None and any(results["black_box_only"].values()):
            results["black_box_retry"] = _retry(
                black_box_retry, model, x, y, batch_size, hidden, epsilons, from_logits, seed + len(attacks)
            )
            black_box = [a for a in attacks if _black_box(a)]
            _check_paths(results["black_box_retry"], black_box, model, x, y, batch_size, epsilons, from_logits, seed)
    measured = [a for i, a in enumerate(attacks) if i in reference and not _black_box(a)]
    if large_epsilon is not None and measured:
        # The reference white-box attack strongest at the largest epsilon, whatever its place in the list.
        top = _key(epsilons[-1])
        strongest = min(measured, key=lambda a: results["attacks"][a.name]["accuracy"][top])
        rows = np.arange(len(y))
        large = _robust_rows(attackers[strongest.name], x, y, rows, batch_size, large_epsilon)
        results["large_epsilon"] = {"epsilon": large_epsilon, "attack": strongest.name, "accuracy": float(large.mean())}
    results["sanity"] = sanity_checks(results, near_zero=near_zero)
    return RobustnessResult(results)


def _retry_attacks(retry):
    """The retry's attacks as a tuple (None: no retry)."""
    if retry is None:
        return None
    attacks = (retry,) if hasattr(retry, "batch_attacker") else None
    if attacks is None and isinstance(retry, (list, tuple)):
        attacks = tuple(retry)
    if not attacks or not all(hasattr(a, "batch_attacker") and not _black_box(a) for a in attacks):
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


def _retry(attacks, model, x, y, batch_size, hidden, epsilons, from_logits, seed):
    """`attacks` in turn on the examples only the black box fooled (`hidden`, by epsilon key): which they fool too.

    An attack whose loss needs more classes than the model has (APGD-T on a
    binary model) is left out, and the report says so (`skipped`); when none
    is left, that is all it says.
    """
    classes = int(model(x[:1], training=False).shape[-1])
    skipped = {
        a.name: f"needs at least {a.min_classes} classes; the model has {classes}"
        for a in attacks
        if getattr(a, "min_classes", 2) > classes
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
        key = _key(epsilon)
        rows = still = np.flatnonzero(hidden[key])
        for attack, attacker in zip(attacks, attackers):
            left = still[_robust_rows(attacker, x, y, still, batch_size, epsilon)] if still.size else still
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
    if not isinstance(points, int) or isinstance(points, bool) or points < 2:
        raise ValueError(f"`points` must be an integer >= 2. Received: points={points!r}")
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


def _check_paths(retry, black_box, model, x, y, batch_size, epsilons, from_logits, seed):
    """`gradient_path_check` on the examples the retry left hidden, to points the black-box attack fools them at.

    Adds `path_checks` (by epsilon key, one entry per example checked: its
    position, and the check, or `"point": None` when the black-box attack
    did not fool it again in `PATH_TRIES` runs) and `path_examples_left` (the
    hidden examples past `PATH_EXAMPLES` that were not checked).
    """
    black_box = [a for a in black_box if hasattr(a.batch_attacker(model, from_logits=from_logits, seed=0), "perturb")]
    if "hidden_examples" not in retry or not black_box:
        return
    retry["path_checks"], retry["path_examples_left"] = {}, {}
    for epsilon in epsilons:
        key = _key(epsilon)
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


def _reference_attacks(attacks):
    """Indices of the attacks that run on every example under a cascade (see `evaluate_robustness`)."""
    chosen = {0}
    multi_step = [i for i, a in enumerate(attacks) if _steps({"config": a.get_config()}) not in (1, None)]
    chosen.update(i for i, a in enumerate(attacks) if _steps({"config": a.get_config()}) == 1)
    chosen.update(multi_step[:1])
    return chosen


def _clean_margins(model, x, y, batch_size, from_logits):
    """Whether the model classifies each example correctly (clean), and its `true_class_margin` there (in logits, or
    log-probabilities, as the attacks measure it)."""
    logits = np.concatenate(
        [
            np.asarray(logits_of(model, tf.constant(x[i : i + batch_size]), from_logits))
            for i in range(0, len(y), batch_size)
        ]
    )
    return np.argmax(logits, axis=-1) == y, true_class_margin(logits, y).numpy()


def _attack_rows(attacker, x, y, rows, batch_size, epsilon, progress=None):
    """Robust (correct clean and under the attack) for each of `rows`, attacked in batches, and the smallest margin
    the attack reached there (NaN where it does not track it). `progress(done, total)` follows the batches: they
    are then handed to the attacker one at a time, in the same order, which draws the same random starts."""
    if progress is None:
        subset = tf.data.Dataset.from_tensor_slices((x[rows], y[rows])).batch(batch_size)
        _, robust, reached = attacker.masks_and_margins(subset, epsilon)
        return robust, reached
    parts = []
    progress(0, rows.size)
    for start in range(0, rows.size, batch_size):
        chunk = rows[start : start + batch_size]
        if hasattr(attacker, "on_progress"):  # a long per-batch search (Square) also reports within its batch
            attacker.on_progress = lambda share, start=start, n=chunk.size: progress(start + int(share * n), rows.size)
        batch = tf.data.Dataset.from_tensor_slices((x[chunk], y[chunk])).batch(batch_size)
        parts.append(attacker.masks_and_margins(batch, epsilon)[1:])
        progress(min(start + batch_size, rows.size), rows.size)
    if hasattr(attacker, "on_progress"):
        attacker.on_progress = None
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _robust_rows(attacker, x, y, rows, batch_size, epsilon):
    """Robust (correct clean and under the attack) for each of `rows`, attacked in batches."""
    return _attack_rows(attacker, x, y, rows, batch_size, epsilon)[0]


def _black_box(attack):
    return bool(attack.get_config().get("black_box"))


def _key(epsilon):
    return f"{epsilon:g}"


def _steps(attack_result):
    """Gradient steps of an attack from its reported settings (None for a black-box attack)."""
    config = attack_result.get("config", {})
    if config.get("black_box"):
        return None
    if "threat" in config:
        return config["threat"]["steps"]
    return config.get("steps")


def _retry_reading(hidden, paths):
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


def wilson_interval(successes, n, z=1.959964):
    """The Wilson score interval of a proportion (95% by default), as [low, high]."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, center - half), 6), round(min(1.0, center + half), 6)]


def sanity_checks(results, *, near_zero=0.1):
    """Gradient-masking checks on an `evaluate_robustness` result, whatever the attacks' names and order.

    - `pgd_not_above_fgsm`: every multi-step white-box attack is at least as
      strong as every single-step one (FGSM), told apart by their settings
      (among the attacks that ran on every example).
    - `monotone_in_epsilon`: accuracy (each such attack's, and the worst
      case) does not rise with epsilon.
    - `large_epsilon_near_zero`: at a destroying epsilon accuracy is near 0.
    - `black_box_finds_nothing_new`: a black-box attack (Square) fooled no
      example that every white-box attack left robust. When it did, and
      `black_box_retry` ran, the check says how many of those examples the
      retry found (`white_box_retry`) and what that suggests.
    """
    keys = [_key(e) for e in results["epsilons"]]
    checks = {}
    attacks = {n: a for n, a in results["attacks"].items() if "accuracy" in a}  # ran on every example
    single = {n: a for n, a in attacks.items() if _steps(a) == 1}
    multi = {n: a for n, a in attacks.items() if _steps(a) not in (1, None)}
    if single and multi:
        violations = [
            {
                "attack": name,
                "epsilon": k,
                "accuracy": a["accuracy"][k],
                "single_step": s_name,
                "single_step_accuracy": s["accuracy"][k],
            }
            for name, a in multi.items()
            for s_name, s in single.items()
            for k in keys
            if a["accuracy"][k] > s["accuracy"][k] + TOLERANCE
        ]
        checks["pgd_not_above_fgsm"] = {"passed": not violations, "violations": violations}
    if "black_box_only" in results:
        found = {k: n for k, n in results["black_box_only"].items() if n > 0}
        checks["black_box_finds_nothing_new"] = {"passed": not found, "examples_by_epsilon": found}
        if found and "found" in results.get("black_box_retry", {}):
            retry = results["black_box_retry"]
            hidden = sum(retry["examples"][k] - retry["found"][k] for k in found)
            checks["black_box_finds_nothing_new"]["white_box_retry"] = {
                "attack": retry["name"],
                "found": {k: retry["found"][k] for k in found},
                "reading": _retry_reading(hidden, [c for k in found for c in retry.get("path_checks", {}).get(k, [])]),
            }
    violations = []
    curves = {name: a["accuracy"] for name, a in attacks.items()}
    if "worst_case" in results:
        curves["worst case"] = results["worst_case"]
    for name, accuracy in curves.items():
        curve = [results["clean_accuracy"]] + [accuracy[k] for k in keys]
        labels = ["0"] + keys
        violations += [
            {
                "attack": name,
                "from_epsilon": labels[i],
                "to_epsilon": labels[i + 1],
                "rise": round(curve[i + 1] - curve[i], 4),
            }
            for i in range(len(curve) - 1)
            if curve[i + 1] > curve[i] + TOLERANCE
        ]
    checks["monotone_in_epsilon"] = {"passed": not violations, "violations": violations}
    if "large_epsilon" in results:
        large = results["large_epsilon"]
        checks["large_epsilon_near_zero"] = {
            "passed": large["accuracy"] <= near_zero,
            "epsilon": large["epsilon"],
            "accuracy": large["accuracy"],
            "threshold": near_zero,
        }
    return checks
