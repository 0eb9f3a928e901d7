import dataclasses
import json

import numpy as np
import pytest

from nsladv import Regularization
from nsladv import ThreatModel
from nsladv import _nsl
from nsladv.configs import check_compatible


def test_defaults_and_resolved_step_sizes():
    assert ThreatModel(epsilon=0.3).resolved_step_size() == pytest.approx(0.3)
    assert ThreatModel(epsilon=0.3, steps=10).resolved_step_size() == pytest.approx(0.075)
    assert ThreatModel(epsilon=0.3, steps=10, step_size=0.01).resolved_step_size() == pytest.approx(0.01)


@pytest.mark.parametrize(
    "spelling, canonical",
    [("linf", "linf"), ("Inf", "linf"), (np.inf, "linf"), ("infinity", "linf"), (2, "l2"), ("L2", "l2"), (1, "l1")],
)
def test_norm_spellings(spelling, canonical):
    assert ThreatModel(norm=spelling).norm == canonical


@pytest.mark.parametrize("cls", [ThreatModel, Regularization])
def test_positional_settings_rejected(cls):
    with pytest.raises(TypeError, match=rf"{cls.__name__} takes keyword arguments only.*Received: 1 positional"):
        cls(0.3)


@pytest.mark.parametrize("epsilon", [0, -0.1, float("nan"), float("inf"), True, "0.3"])
def test_epsilon_must_be_positive(epsilon):
    with pytest.raises(ValueError, match=r"`epsilon` must be a finite number > 0. Received: epsilon="):
        ThreatModel(epsilon=epsilon)


def test_per_feature_epsilon_must_be_positive():
    with pytest.raises(ValueError, match=r"`epsilon\['b'\]` must be a finite number > 0. Received: epsilon\['b'\]=0"):
        ThreatModel(epsilon={"a": 0.1, "b": 0})


def test_unknown_norm():
    with pytest.raises(ValueError, match=r"Unknown norm. Expected one of \['linf', 'l2', 'l1'\].*Received: norm='l3'"):
        ThreatModel(norm="l3")


def test_unknown_distance():
    with pytest.raises(ValueError, match=r"Unknown distance. Expected one of .*'label'.*Received: distance='hinge'"):
        Regularization(distance="hinge")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 0}, r"`steps` must be an integer >= 1. Received: steps=0"),
        ({"step_size": -1.0}, r"`step_size` must be a finite number > 0"),
        ({"clip_range": (1, 0)}, r"`clip_range` must be a pair \(min, max\).*Received: clip_range=\(1, 0\)"),
        ({"random_start": "yes"}, r"`random_start` must be True, False or None"),
        ({"feature_mask": [0.5, 2.0]}, r"array of values in \[0, 1\]"),
        ({"epsilon": {"a": 0.1}, "step_size": 0.1}, r"per-feature epsilon.*leave `step_size` unset"),
    ],
)
def test_invalid_threat_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ThreatModel(**kwargs)


def test_invalid_multiplier():
    with pytest.raises(ValueError, match=r"`multiplier` must be a finite number >= 0. Received: multiplier=-1"):
        Regularization(multiplier=-1)


def test_divergence_without_random_start_is_rejected():
    with pytest.raises(ValueError, match=r"gradient is zero at x' = x.*Received: random_start=False"):
        check_compatible(ThreatModel(random_start=False), Regularization(distance="kl"))
    assert ThreatModel().uses_random_start("kl") and not ThreatModel().uses_random_start("label")


def test_configs_are_frozen():
    threat = ThreatModel()
    with pytest.raises(dataclasses.FrozenInstanceError):
        threat.epsilon = 1.0
    with pytest.raises(TypeError):
        ThreatModel(epsilon={"a": 0.1}).epsilon["a"] = 1.0


def test_round_trip_through_json():
    threat = ThreatModel(
        epsilon={"image": 0.3, "age": 2.0},
        norm="l2",
        steps=7,
        random_start=True,
        clip_range={"image": (0, 1), "age": None},
        feature_mask={"image": np.ones((2, 2), "float32") * 0.5, "age": True},
    )
    regularization = Regularization(multiplier=0.5, distance="kl", from_logits=True)
    for config in (threat, regularization):
        restored = type(config).from_config(json.loads(json.dumps(config.get_config())))
        assert restored == config
    assert threat.replace(steps=3).steps == 3 and threat.replace(steps=3) != threat


def test_conversion_to_nsl_configs():
    config = _nsl.adv_neighbor_config(norm="linf", step_size=0.1, clip_min={"a": 0.0}, clip_max={"a": 1.0})
    assert isinstance(config, _nsl.nsl.configs.AdvNeighborConfig)
    assert config.adv_grad_norm == _nsl.nsl.configs.NormType.INFINITY
    assert config.adv_step_size == 0.1 and config.pgd_iterations == 1 and not config.random_init
    distance = _nsl.distance_config("kl", from_logits=True)
    assert distance.distance_type == _nsl.nsl.configs.DistanceType.KL_DIVERGENCE
    assert distance.transform_fn == _nsl.nsl.configs.TransformType.SOFTMAX
    assert _nsl.distance_config("l2", from_logits=True).transform_fn == _nsl.nsl.configs.TransformType.NONE
