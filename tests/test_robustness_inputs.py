"""evaluate_robustness as a one-liner: data as arrays or datasets, radii as numbers, attacks by name."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import nsladv
from nsladv.errors import DataError
from nsladv.robustness import RobustnessResult
from nsladv.robustness import attack_set

RNG = np.random.default_rng(0)
X = RNG.random((40, 4, 4, 1), dtype=np.float32)
Y = (X.reshape(40, -1)[:, :8].sum(1) > X.reshape(40, -1)[:, 8:].sum(1)).astype(np.int64)


def classifier(softmax=False):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((4, 4, 1))
    logits = keras.layers.Dense(2)(keras.layers.Flatten()(inputs))
    if not softmax:
        return keras.Model(inputs, logits)
    return keras.Model(inputs, keras.layers.Softmax()(logits))


def test_arrays_and_datasets_batched_or_not_give_the_same_result():
    model = classifier()
    attacks = attack_set("quick")
    results = [
        nsladv.evaluate_robustness(model, data, epsilons=0.1, attacks=attacks)
        for data in (
            (X, Y),
            tf.data.Dataset.from_tensor_slices((X, Y)),
            tf.data.Dataset.from_tensor_slices((X, Y)).batch(40),
        )
    ]
    assert all(isinstance(r, RobustnessResult) for r in results)
    assert results[0]["worst_case"] == results[1]["worst_case"] == results[2]["worst_case"]
    assert results[0]["examples"] == 40


def test_a_softmax_output_is_detected_and_attacked_as_probabilities():
    # The same weights with and without a softmax layer: the same loss surface, so the same worst case.
    logits, probabilities = classifier(), classifier(softmax=True)
    attacks = attack_set("quick")
    a = nsladv.evaluate_robustness(logits, (X, Y), epsilons=[0.05, 0.2], attacks=attacks)
    b = nsladv.evaluate_robustness(probabilities, (X, Y), epsilons=[0.05, 0.2], attacks=attacks)
    assert a["worst_case"] == b["worst_case"]
    wrong = nsladv.evaluate_robustness(probabilities, (X, Y), epsilons=0.2, attacks=attacks, from_logits=True)
    assert wrong["clean_accuracy"] == b["clean_accuracy"]


def test_a_set_named_by_its_name_fits_the_models_classes():
    # Two classes: APGD-T's targeted DLR loss compares the top four scores, so the set runs without it.
    result = nsladv.evaluate_robustness(classifier(), (X[:10], Y[:10]), epsilons=0.1, attacks="standard")
    assert list(result["attacks"]) == ["fgsm", "apgd-ce", "apgd-ce-x20-closest", "square"]
    five = attack_set("full", num_classes=5)
    assert [a.target_classes for a in five if a.name in ("apgd-t", "fab-t")] == [4, 4]  # every wrong class, no more


def test_the_result_reads_the_worst_case_and_writes_a_card(tmp_path):
    result = nsladv.evaluate_robustness(classifier(), (X, Y), epsilons="0.05,0.2", attacks="quick")
    assert result.worst_case_at(0.2) == result["worst_case"]["0.2"]
    with pytest.raises(KeyError, match=r"Not evaluated at epsilon 0\.3\. Evaluated: 0\.05, 0\.2"):
        result.worst_case_at(0.3)
    card = result.write_card(tmp_path / "card.md").read_text()
    assert f"| worst case | **{100 * result['worst_case']['0.05']:.2f}%** |" in card
    assert "| +pgd20 |" in card and "Clean accuracy" in card


@pytest.mark.parametrize(
    "data, error, message",
    [
        ((X, Y + 2), DataError, r"below the model's 2 outputs\. Received: labels up to 3"),
        ((X, Y[:5]), DataError, r"one row per example\. Received: x \(40, 4, 4, 1\), y \(5,\)"),
        (((X * 255).astype(np.uint8), Y), DataError, r"Expected float inputs .*Received: inputs of dtype uint8"),
        ((X, Y.astype(np.float32)), DataError, r"integer class ids as labels\. Received: labels of dtype float32"),
    ],
)
def test_bad_evaluation_data(data, error, message):
    with pytest.raises(error, match=message):
        nsladv.evaluate_robustness(classifier(), data, epsilons=0.1, attacks="quick")


def test_l2_sets_are_pgd_and_full_is_linf_only():
    assert [a.name for a in attack_set("standard", norm="l2")] == ["fgsm", "pgd40", "pgd100"]
    assert all(a.norm == "l2" for a in attack_set("quick", norm="l2"))
    with pytest.raises(ValueError, match=r"AutoAttack's standard version \('full'\) is L-inf here"):
        attack_set("full", norm="l2")
