"""Frozen, validated settings: the threat model and the regularization.

Both are plain data (no tensors, no models): they validate at construction,
round-trip through `get_config()` / `from_config()` (JSON-friendly dicts) and
convert to `nsl.configs` objects through the NSL bridge.
"""

import dataclasses
import functools
import math
import types
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np

from nsladv.graph.packed import DEFAULT_PREFIX
from nsladv.graph.packed import DEFAULT_WEIGHT_SUFFIX
from nsladv.graph.packed import PackedFormat
from nsladv.settings_checks import integer
from nsladv.settings_checks import is_integer
from nsladv.settings_checks import is_number
from nsladv.settings_checks import number

NORMS = ("linf", "l2", "l1")
DISTANCES = ("label", "kl", "js", "l2", "cosine")
# Distances between the clean and the neighbor predictions (not the labels).
DIVERGENCES = ("kl", "js", "l2", "cosine")

_NORM_ALIASES = {
    "linf": "linf",
    "l_inf": "linf",
    "inf": "linf",
    "infinity": "linf",
    "l2": "l2",
    "2": "l2",
    "l1": "l1",
    "1": "l1",
}


class KeywordOnly:
    """Base of the settings classes (dataclasses with `kw_only=True`): a positional call gets a helpful message."""

    def __new__(cls, *args, **kwargs):
        if args:
            first = dataclasses.fields(cls)[0]
            raise TypeError(
                f"{cls.__name__} takes keyword arguments only, e.g. {cls.__name__}({first.name}=...). "
                f"Received: {len(args)} positional argument(s): {args!r}"
            )
        return super().__new__(cls)


def canonical_norm(norm):
    """Returns `"linf"`, `"l2"` or `"l1"` for any accepted spelling of a norm.

    Accepted: those names, `"inf"`, `"infinity"`, `np.inf`, `2` and `1`.
    """
    if is_number(norm):
        key = "inf" if math.isinf(norm) else str(int(norm)) if norm == int(norm) else None
    elif isinstance(norm, str):
        key = norm.strip().lower()
    else:
        key = None
    if key not in _NORM_ALIASES:
        raise ValueError(f"Unknown norm. Expected one of {list(NORMS)} (or np.inf, 2, 1). Received: norm={norm!r}")
    return _NORM_ALIASES[key]


def _positive_number(name, value):
    number(name, value, above=True)
    return float(value)


def _frozen_mapping(name, value, convert):
    if not value:
        raise ValueError(f"`{name}` must not be an empty mapping. Received: {name}={value!r}")
    for key in value:
        if not isinstance(key, str):
            raise ValueError(f"`{name}` keys must be input feature names (str). Received: {name}={value!r}")
    return types.MappingProxyType({k: convert(f"{name}[{k!r}]", v) for k, v in value.items()})


def _clip_pair(name, value):
    if value is None:
        return None
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or not all(is_number(v) for v in value)
        or not value[0] < value[1]
    ):
        raise ValueError(
            f"`{name}` must be a pair (min, max) of numbers with min < max, or None. Received: {name}={value!r}"
        )
    return (float(value[0]), float(value[1]))


def _mask_leaf(name, value):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    array = np.asarray(value, dtype=np.float32)
    if array.size == 0 or not np.all((array >= 0) & (array <= 1)):
        raise ValueError(
            f"`{name}` must be True, False or an array of values in [0, 1] that "
            f"broadcasts to the feature (without its batch axis). "
            f"Received: {name}={value!r}"
        )
    array.setflags(write=False)
    return array


def _freeze_mask(mask):
    if mask is None:
        return None
    if isinstance(mask, Mapping):
        return _frozen_mapping("feature_mask", mask, _mask_leaf)
    if isinstance(mask, (list, tuple)):
        return tuple(_mask_leaf(f"feature_mask[{i}]", v) for i, v in enumerate(mask))
    return _mask_leaf("feature_mask", mask)


def _mask_to_config(mask):
    def leaf(value):
        return value if isinstance(value, bool) else value.tolist()

    if mask is None:
        return None
    if isinstance(mask, Mapping):
        return {k: leaf(v) for k, v in mask.items()}
    if isinstance(mask, tuple):
        return [leaf(v) for v in mask]
    return leaf(mask)


class _PlainSettings(KeywordOnly):
    """replace / get_config / from_config / == for settings; a class whose fields are not plain values (ThreatModel's
    mappings and masks) overrides `get_config` alone."""

    def replace(self, **changes):
        """A copy with some settings changed (validated again)."""
        return type(self)(**{**self.get_config(), **changes})

    def get_config(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(other) is type(self) and self.get_config() == other.get_config()

    __hash__ = None


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ThreatModel(_PlainSettings):
    """The perturbations an attacker may make: x' = x + delta, delta in a norm ball.

    Neighbors are built by projected gradient ascent (PGD) on the attack loss:

        x_0 = x (+ a random point of the ball when `random_start`)
        x_{t+1} = clip(x + P_eps(x_t + step_size * u(grad_x loss(x_t)) - x))

    where `u(g)` maximizes `g . v` over `||v|| <= 1` (sign(g) for L-inf,
    g / ||g||_2 for L2, for L1 the largest coordinate among those that are
    not at the clip bound the gradient points to), `P_eps` projects onto
    the epsilon ball of `norm` and `clip` keeps x' in `clip_range`. With
    `steps=1` and no random start this is FGSM (the fast gradient method).

    Args:
        epsilon: radius of the ball, > 0. A mapping `{feature name: radius}`
            gives dict inputs one radius per feature (the ball is then
            `||(delta_f / epsilon_f)_f|| <= 1`); features left out of the
            mapping are not perturbed.
        norm: `"linf"`, `"l2"` or `"l1"` (also `np.inf`, `2`, `1`).
        steps: PGD iterations, >= 1 (1 is FGSM).
        step_size: size of each step. Defaults to `epsilon` for one step and
            to `2.5 * epsilon / steps` for PGD (Madry et al.). Must be left
            unset with a per-feature epsilon (each feature then gets its own).
        random_start: start from a uniformly random point of the ball. `None`
            (default) means: only where the attack loss has no gradient at
            x' = x (the divergence distances).
        clip_range: `(min, max)` every perturbed feature is clipped to, a
            mapping `{feature name: (min, max) or None}`, or `None`.
        feature_mask: which inputs to perturb. Same structure as the inputs
            (a mapping for dict inputs may leave features out): `True`,
            `False`, or an array in [0, 1] multiplying the gradient and the
            random start elementwise (e.g. to perturb some pixels only);
            elements whose entry is 0 never move. Non-float inputs are never
            perturbed; asking for one is an error.

    Example:

    >>> threat = ThreatModel(epsilon=0.3, norm="linf", steps=10)
    >>> threat.resolved_step_size()
    0.075
    """

    epsilon: object = 0.1
    norm: str = "linf"
    steps: int = 1
    step_size: object = None
    random_start: object = None
    clip_range: object = None
    feature_mask: object = None

    def __post_init__(self):
        set_ = functools.partial(object.__setattr__, self)
        if isinstance(self.epsilon, Mapping):
            set_("epsilon", _frozen_mapping("epsilon", self.epsilon, _positive_number))
        else:
            set_("epsilon", _positive_number("epsilon", self.epsilon))
        set_("norm", canonical_norm(self.norm))
        integer("steps", self.steps, numpy=True)
        set_("steps", int(self.steps))
        if self.step_size is not None:
            if isinstance(self.epsilon, Mapping):
                raise ValueError(
                    "With a per-feature epsilon, each feature's step size is derived "
                    "from its epsilon (epsilon_f for one step, 2.5 * epsilon_f / steps "
                    "for PGD); leave `step_size` unset. "
                    f"Received: step_size={self.step_size!r}"
                )
            set_("step_size", _positive_number("step_size", self.step_size))
        if self.random_start is not None and not isinstance(self.random_start, bool):
            raise ValueError(
                f"`random_start` must be True, False or None. Received: random_start={self.random_start!r}"
            )
        if isinstance(self.clip_range, Mapping):
            set_("clip_range", _frozen_mapping("clip_range", self.clip_range, _clip_pair))
        else:
            set_("clip_range", _clip_pair("clip_range", self.clip_range))
        set_("feature_mask", _freeze_mask(self.feature_mask))

    def resolved_step_size(self):
        """The step size in units of epsilon's input space (scalar epsilon)."""
        return self.relative_step_size() * (1.0 if isinstance(self.epsilon, Mapping) else self.epsilon)

    def relative_step_size(self):
        """The step size divided by epsilon."""
        if self.step_size is not None:
            return self.step_size / self.epsilon
        return 1.0 if self.steps == 1 else 2.5 / self.steps

    def uses_random_start(self, distance="label"):
        """Whether the attack starts from a random point, given the distance."""
        if self.random_start is None:
            return distance in DIVERGENCES
        return self.random_start

    def get_config(self):
        epsilon = dict(self.epsilon) if isinstance(self.epsilon, Mapping) else self.epsilon
        clip = self.clip_range
        if isinstance(clip, Mapping):
            clip = {k: list(v) if v else None for k, v in clip.items()}
        elif clip is not None:
            clip = list(clip)
        return {
            "epsilon": epsilon,
            "norm": self.norm,
            "steps": self.steps,
            "step_size": self.step_size,
            "random_start": self.random_start,
            "clip_range": clip,
            "feature_mask": _mask_to_config(self.feature_mask),
        }


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class Regularization(_PlainSettings):
    """How neighbors enter the training loss.

    total = L(y, f(x)) + multiplier * D

    with the neighbor-consistency term D chosen by `distance`:

    - `"label"`: L(y, f(x')), the compiled loss on the neighbor (as in NSL);
      the neighbor maximizes the same loss.
    - `"kl"`: KL(f(x) || f(x')) between predicted class distributions
      (TRADES); the neighbor maximizes it, from a random start.
    - `"js"`: the Jensen-Shannon divergence, likewise.
    - `"l2"`: squared L2 distance between the outputs (logit pairing).
    - `"cosine"`: cosine distance between the outputs.

    Divergences are computed by NSL's `pairwise_distance_wrapper`.

    Args:
        multiplier: weight of the neighbor term, >= 0.
        distance: one of `"label"`, `"kl"`, `"js"`, `"l2"`, `"cosine"`.
        from_logits: whether the model outputs logits (for `kl`/`js`). `None`
            infers it from the compiled loss's `from_logits`.

    Example:

    >>> Regularization(multiplier=1.0, distance="kl").get_config()["distance"]
    'kl'
    """

    multiplier: float = 0.2
    distance: str = "label"
    from_logits: object = None

    def __post_init__(self):
        m = self.multiplier
        number("multiplier", m)
        object.__setattr__(self, "multiplier", float(m))
        distance = self.distance.lower() if isinstance(self.distance, str) else self.distance
        if distance not in DISTANCES:
            raise ValueError(
                f"Unknown distance. Expected one of {list(DISTANCES)}. Received: distance={self.distance!r}"
            )
        object.__setattr__(self, "distance", distance)
        if self.from_logits is not None and not isinstance(self.from_logits, bool):
            raise ValueError(f"`from_logits` must be True, False or None. Received: from_logits={self.from_logits!r}")


def check_compatible(threat, regularization):
    """Rejects a threat model that cannot build neighbors for the distance."""
    if regularization.distance in DIVERGENCES and threat.random_start is False:
        raise ValueError(
            f"distance={regularization.distance!r} compares f(x) with f(x'), whose "
            "gradient is zero at x' = x: without a random start the neighbor "
            "would equal x. Use random_start=True (or leave it None). "
            "Received: random_start=False"
        )


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class GraphRegularization(_PlainSettings):
    """The graph term: agreement along the edges to natural neighbors.

    total = ... + multiplier * G, with

        G = sum_ij w_ij D(f(x_i), f(n_ij)) / #{(i, j): w_ij != 0}

    over each sample x_i of the batch and its neighbors n_ij with edge
    weights w_ij (NSL's graph reduction: missing neighbors, weight 0, count
    for nothing; a batch without edges adds 0). `distance` takes the same
    values as `Regularization`'s: the divergences compare f(x_i) with
    f(n_ij), both with gradients, as NSL's `GraphRegularization` does, and
    ignore sample weights as NSL does (so an unlabelled sample with weight 0
    still pulls its neighbors); `"label"` is the compiled loss of the
    neighbor's prediction against the sample's label (label propagation),
    and there w_ij is multiplied by the sample's weight s_i, since the label
    is what the edge carries.

    Neighbors arrive inside the features in NSL's format (`nsl.tools.pack_nbrs`,
    or `nsladv.graph.NeighborTable` in memory): `{prefix}{j}_{feature}` and
    `{prefix}{j}{weight_suffix}` (shape `[batch, 1]`).

    Args:
        multiplier: weight of the graph term, >= 0 (NSL's default 0.01).
        distance: `"label"`, `"kl"`, `"js"`, `"l2"` (NSL's default) or `"cosine"`.
        max_neighbors: neighbors used per sample; `None` uses every neighbor
            slot the features carry.
        from_logits: whether the model outputs logits (for `kl`/`js`); `None`
            infers it from the compiled loss.
        prefix: the neighbor feature prefix (NSL's, `"NL_nbr_"`).
        weight_suffix: the neighbor weight suffix (NSL's, `"_weight"`).

    Example:

    >>> GraphRegularization(multiplier=0.1, distance="kl", max_neighbors=3).max_neighbors
    3
    """

    multiplier: float = 0.01
    distance: str = "l2"
    max_neighbors: object = None
    from_logits: object = None
    prefix: str = DEFAULT_PREFIX
    weight_suffix: str = DEFAULT_WEIGHT_SUFFIX

    def __post_init__(self):
        # The multiplier, distance and from_logits rules are Regularization's.
        checked = Regularization(multiplier=self.multiplier, distance=self.distance, from_logits=self.from_logits)
        object.__setattr__(self, "multiplier", checked.multiplier)
        object.__setattr__(self, "distance", checked.distance)
        k = self.max_neighbors
        if k is not None and (not is_integer(k, numpy=True) or k < 1):
            raise ValueError(
                f"`max_neighbors` must be an integer >= 1 or None (every neighbor the features carry). "
                f"Received: max_neighbors={k!r}"
            )
        for name in ("prefix", "weight_suffix"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"`{name}` must be a non-empty string. Received: {name}={value!r}")
        if k is not None:
            object.__setattr__(self, "max_neighbors", int(k))

    @property
    def format(self):
        """The `nsladv.graph.PackedFormat` of these neighbor names."""
        return PackedFormat(self.prefix, self.weight_suffix)
