"""The named attack sets (`quick`, `standard`, `full`) and fitting attacks to a model's classes and input range.

`ATTACK_SETS` is the one place the sets are described; the CLI, the pipelines and the docs point here.
"""

import dataclasses

from nsladv.robustness.apgd import APGD
from nsladv.robustness.apgd import apgd_ce
from nsladv.robustness.apgd import apgd_t
from nsladv.robustness.attacks import FGSM
from nsladv.robustness.attacks import Attack
from nsladv.robustness.attacks import fgsm
from nsladv.robustness.attacks import pgd
from nsladv.robustness.closest import Closest
from nsladv.robustness.fab import fab_t
from nsladv.robustness.square import Square

# Named attack sets, weakest to strongest. `quick` and `standard` start with FGSM and one multi-step attack on
# every example (the gradient-masking checks compare them); every set ends with the black-box Square on what is
# still robust.
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
    # AutoAttack's standard version, setting for setting (fra31/auto-attack's `version="standard"`): APGD-CE
    # (100 iterations, 1 restart), APGD-T (9 target classes, 1 restart each), FAB-T (9, 1 each) and Square
    # (5,000 queries, p_init 0.8, the window schedule unscaled), in that order and nothing else: no FGSM, so
    # its figure is AutoAttack's and not a union with more attacks.
    "full": lambda: (
        apgd_ce(),
        apgd_t(target_classes=9),
        fab_t(target_classes=9),
        Square(queries=5000, rescale_schedule=False),
    ),
}


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
    usable = [a for a in attacks if num_classes is None or a.min_classes <= num_classes]
    return tuple(_fitted(a, clip, num_classes) for a in usable)


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
