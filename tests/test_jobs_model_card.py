"""The model card: published anchors belong to the dataset they were measured on."""

import pytest

from nsladv.jobs.model_card import model_card

RESULT = {
    "epsilons": [0.3],
    "clean_accuracy": 0.99,
    "examples": 10,
    "attacks": {"fgsm": {"seed": 0}},
    "after_each_attack": {"0.3": {"fgsm": 0.9}},
    "worst_case": {"0.3": 0.9},
    "confidence_95": {"0.3": [0.6, 0.98]},
    "sanity": {},
}


@pytest.mark.parametrize(
    "dataset, anchored",
    [("mnist_offline", True), ("mnist:3.0.1@train,test", True), ("fashion_mnist", False), ("/data/images", False)],
)
def test_published_anchors_appear_only_for_their_dataset(dataset, anchored):
    card = model_card(
        title="t", model={}, dataset={"name": dataset, "split": "test", "examples": 10}, evaluations={"m": RESULT}
    )
    assert ("## Published anchors" in card) is anchored
    assert ("TRADES (Zhang et al.)" in card) is anchored
    assert "## Versions" in card and "## Limits of the claim" in card
