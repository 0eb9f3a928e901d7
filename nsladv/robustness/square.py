"""The Square Attack (Andriushchenko et al., 2020), L-inf: a black-box check for gradient masking.

Random search on the margin loss: starting from vertical stripes of +-epsilon,
each query changes one random square window of the perturbation (per channel
to +-epsilon) and keeps the change when the margin (the true class's logit
minus the best other) drops. The window covers a share p of the image that
halves on a fixed schedule. It uses predictions only, so masked or shattered
gradients do not stop it: an example it fools that the white-box attacks left
robust means those attacks were misled.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from nsladv.robustness.base import Counter
from nsladv.robustness.base import LinfSettings
from nsladv.robustness.base import attack_seed
from nsladv.robustness.base import true_class_margin
from nsladv.settings_checks import integer

# Iterations (per 10,000 queries) at which the window's share halves (the paper's schedule).
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Square(LinfSettings):
    """The Square Attack, L-inf.

    Args:
        name: label for reports.
        queries: model queries per example (AutoAttack: 5,000).
        p_init: the first window's share of the image (AutoAttack: 0.8).
        rescale_schedule: stretch the window's halving schedule, written for
            10,000 queries, over `queries` (the Square Attack code's default);
            AutoAttack's standard version runs it as written
            (`resc_schedule=False`): with 5,000 queries the window stops
            shrinking at its 1/128 share.
        clip_range: the valid input range.
    """

    name: str = "square"
    queries: int = 1000
    p_init: float = 0.8
    rescale_schedule: bool = True
    clip_range: tuple = (0.0, 1.0)

    def __post_init__(self):
        integer("queries", self.queries)
        if not 0 < self.p_init <= 1:
            raise ValueError(f"`p_init` must be in (0, 1]. Received: p_init={self.p_init!r}")

    black_box = True
    gives_points = True

    def get_config(self):
        return {**super().get_config(), "black_box": True}

    def batch_attacker(self, model, *, from_logits=True, seed=None):
        return SquareAttacker(model, self, seed=seed)


PROGRESS_EVERY = 100


class SquareAttacker(Counter):
    """Runs `Square` batch by batch; its random draws come from `seed` (None: NumPy's global generator)."""

    def __init__(self, model, attack, *, seed=None):
        self.model = model
        self.attack = attack
        self.seed = attack_seed(seed)
        self.rng = np.random.default_rng(self.seed)
        # Called as on_progress(share of the queries spent) every PROGRESS_EVERY queries of a batch, when set.
        self.on_progress = None
        # The margin is computed in the compiled call with the forward pass: eagerly, its few ops cost 15% more a
        # query on the small batches of still-robust images Square ends with.
        self._margin = tf.function(lambda x, y: true_class_margin(model(x, training=False), y), reduce_retracing=True)

    def reseed(self, seed):
        """Starts the random draws over from `seed` (the same draws as a fresh attacker's)."""
        self.seed = attack_seed(seed)
        self.rng = np.random.default_rng(self.seed)

    def _margins(self, x, y):
        return self._margin(tf.constant(x, tf.float32), tf.constant(y, tf.int64)).numpy()

    def _share(self, iteration):
        """The window's share of the image at `iteration`: p_init halved at each of `_HALVINGS` passed, on the
        schedule's own 10,000-query scale (truncated to an integer, as the reference does) or as written."""
        at = int(iteration * 10_000 / self.attack.queries) if self.attack.rescale_schedule else iteration
        return self.attack.p_init / 2 ** sum(at > halving for halving in _HALVINGS)

    def batch_masks(self, x, y, epsilon):
        clean, robust, _ = self.perturb(x, y, epsilon)
        return tf.constant(clean), tf.constant(robust)

    def perturb(self, x, y, epsilon):
        """Per example: correct clean, robust (NumPy bools), and the best point found (fooling where not robust)."""
        x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
        lo, hi = self.attack.clip_range
        clean = self._margins(x, y) > 0
        if x.ndim != 4:
            raise ValueError(
                f"The Square Attack takes images (batch, height, width, channels). Received: shape {x.shape}"
            )
        height, width, channels = x.shape[1:]
        stripes = self.rng.choice([-epsilon, epsilon], size=(len(x), 1, width, channels))
        adversarial = np.clip(x + stripes, lo, hi).astype(np.float32)
        margins = self._margins(adversarial, y)
        for iteration in range(1, self.attack.queries):
            if self.on_progress is not None and iteration % PROGRESS_EVERY == 0:
                self.on_progress(iteration / self.attack.queries)
            active = np.flatnonzero(clean & (margins > 0))
            if active.size == 0:
                break
            side = int(np.clip(round(np.sqrt(self._share(iteration) * height * width)), 1, min(height, width) - 1))
            # Each image gets a window of its own, as the Square Attack paper's code draws them (AutoAttack's PyTorch
            # code draws one window a batch).
            top = self.rng.integers(0, height - side + 1, size=(active.size, 1))
            left = self.rng.integers(0, width - side + 1, size=(active.size, 1))
            rows, cols = np.arange(height)[None], np.arange(width)[None]
            in_rows, in_cols = (rows >= top) & (rows < top + side), (cols >= left) & (cols < left + side)
            inside = in_rows[:, :, None] & in_cols[:, None]
            window = self.rng.choice([-epsilon, epsilon], size=(active.size, 1, 1, channels))
            patch = np.clip(x[active] + window, lo, hi)
            candidate = np.where(inside[..., None], patch, adversarial[active]).astype(np.float32)
            new = self._margins(candidate, y[active])
            better = new < margins[active]
            adversarial[active[better]] = candidate[better]
            margins[active[better]] = new[better]
        return clean, clean & (margins > 0), adversarial
