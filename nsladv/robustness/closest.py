"""`Closest`: a white-box attack run again only on the examples the attacks before it came closest to fooling."""

import dataclasses
import math

import numpy as np

from nsladv.robustness.base import AttackSettings


@dataclasses.dataclass(frozen=True, kw_only=True)
class Closest(AttackSettings):
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
        if not isinstance(self.attack, AttackSettings) or self.attack.black_box or isinstance(self.attack, Closest):
            raise ValueError(
                "`Closest` re-runs a white-box attack (APGD, FAB or an nsladv Attack). "
                f"Received: attack={self.attack!r}"
            )
        if isinstance(self.share, bool) or not isinstance(self.share, (int, float)) or not 0 < self.share <= 1:
            raise ValueError(f"`share` must be a fraction in (0, 1]. Received: share={self.share!r}")
        if self.name is None:
            object.__setattr__(self, "name", f"{self.attack.name}-closest")

    @property
    def min_classes(self):
        return self.attack.min_classes

    def get_config(self):
        return {"name": self.name, "share": self.share, "attack": self.attack.get_config()}

    def batch_attacker(self, model, *, from_logits=True, seed=None):
        return self.attack.batch_attacker(model, from_logits=from_logits, seed=seed)

    def rows(self, candidates, margins):
        """The closest `share` of `candidates` (row indices), smallest margin first."""
        count = max(1, math.ceil(round(self.share * candidates.size, 9))) if candidates.size else 0
        return candidates[np.argsort(margins[candidates], kind="stable")[:count]]
