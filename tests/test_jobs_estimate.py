"""nsladv.jobs.estimate: the passes each phase makes, counted by hand, and a timing that scales them."""

import keras
import pytest

from nsladv import ThreatModel
from nsladv.jobs import estimate
from nsladv.jobs.pipeline import load_pipeline
from nsladv.robustness import APGD
from nsladv.robustness import FAB
from nsladv.robustness import FGSM
from nsladv.robustness import Closest
from nsladv.robustness import Square
from nsladv.robustness import pgd


@pytest.mark.parametrize(
    "attack, passes",
    [
        (FGSM, 1),
        (pgd(40, 3), 120),
        (APGD(steps=100), 100),
        (APGD(name="t", loss="dlr-targeted", steps=100, target_classes=3), 300),
        (FAB(steps=100, target_classes=9), 1800),  # two passes' work a step, per target
        (Square(queries=1000), 1000 / 3),  # forward passes only
        (Closest(attack=APGD(name="x20", restarts=20), share=0.05), 100),  # 5% of 2,000 passes
    ],
)
def test_passes_per_example_and_radius(attack, passes):
    assert estimate.attack_passes(attack) == pytest.approx(passes)


def test_an_undefended_model_keeps_a_quarter_of_its_examples_after_the_first_multi_step_attack():
    attacks = (FGSM, APGD(steps=100), Square(queries=300))
    assert estimate.evaluation_passes(attacks, 10, 2, robust=True) == pytest.approx((1 + 100 + 100) * 10 * 2)
    assert estimate.evaluation_passes(attacks, 10, 2, robust=False) == pytest.approx((1 + 100 + 25) * 10 * 2)


def test_training_counts_the_neighbor_steps_the_clean_step_and_the_monitor():
    pipeline = load_pipeline("mnist").replace(epochs=2, monitor_examples=100)  # PGD-3 neighbors
    assert pipeline.threat == ThreatModel(
        epsilon=0.3, norm="linf", steps=3, step_size=0.15, random_start=True, clip_range=(0.0, 1.0)
    )
    adversarial = estimate.training_passes(pipeline, 1000, 300, adversarial=True)
    assert adversarial == pytest.approx(2 * ((1 + 3 + 1) * 1000 + 300 / 3 + 11 * 100))
    assert estimate.training_passes(pipeline, 1000, 300, adversarial=False) == pytest.approx(2 * (1000 + 100))


def test_a_timed_pass_is_positive_and_scales_linearly():
    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    timing = estimate.time_passes(model, (4, 4, 1), batch_size=8, repeats=2)
    assert timing.per_example > 0 and timing.trace >= 0
    assert timing.seconds(2000, 3) == pytest.approx(2 * timing.seconds(1000, 1.5))
