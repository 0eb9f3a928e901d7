"""The cascade (nsladv.robustness.evaluation), `Closest`, the black-box retry and the gradient-masking checks: worst
cases counted example by example, on models whose answers are known."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from robustness_helpers import W
from robustness_helpers import X
from robustness_helpers import Y
from robustness_helpers import hidden_corner_classifier
from robustness_helpers import honest_linear_task
from robustness_helpers import linear_classifier

from nsladv import FGSM
from nsladv import Attack
from nsladv import ThreatModel
from nsladv import evaluate_robustness
from nsladv import pgd
from nsladv.jobs.report import check_summary
from nsladv.robustness import fgsm
from nsladv.robustness.base import AttackSettings
from nsladv.robustness.base import Counter
from nsladv.robustness.checks import sanity_checks


def test_evaluate_robustness_on_the_linear_model():
    x = np.random.default_rng(0).random((64, 3)).astype("float32")
    y = np.argmax(x @ W, axis=1)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    result = evaluate_robustness(
        linear_classifier(), dataset, epsilons=[0.05, 0.2], attacks=[FGSM, pgd(10, 2)], large_epsilon=1.0
    )
    assert result["clean_accuracy"] == 1.0 and result["examples"] == 64
    fgsm, pgd10 = result["attacks"]["fgsm"]["accuracy"], result["attacks"]["pgd10"]["accuracy"]
    assert fgsm["0.2"] <= fgsm["0.05"] < 1.0
    assert pgd10["0.2"] <= fgsm["0.2"] + 1e-9
    assert all(check["passed"] for check in result["sanity"].values()), result["sanity"]


def _result(fgsm, pgd_acc, clean=0.9, large=0.0, names=("fgsm", "pgd40")):
    keys = ["0.1", "0.3"]
    return {
        "epsilons": [0.1, 0.3],
        "clean_accuracy": clean,
        "attacks": {
            names[0]: {"config": FGSM.get_config(), "accuracy": dict(zip(keys, fgsm))},
            names[1]: {"config": pgd(40).get_config(), "accuracy": dict(zip(keys, pgd_acc))},
        },
        "large_epsilon": {"epsilon": 0.5, "accuracy": large},
    }


def test_sanity_checks_flag_gradient_masking():
    assert all(c["passed"] for c in sanity_checks(_result([0.6, 0.4], [0.5, 0.3])).values())
    checks = sanity_checks(_result([0.6, 0.4], [0.7, 0.3]))
    assert not checks["pgd_not_above_fgsm"]["passed"]
    assert checks["pgd_not_above_fgsm"]["violations"][0]["epsilon"] == "0.1"
    checks = sanity_checks(_result([0.4, 0.6], [0.3, 0.5]))
    assert not checks["monotone_in_epsilon"]["passed"]
    checks = sanity_checks(_result([0.6, 0.4], [0.5, 0.3], large=0.3))
    assert not checks["large_epsilon_near_zero"]["passed"]


def test_the_worst_case_is_counted_example_by_example():
    """Two attacks that each fool a different ~10% leave ~81% robust to both: never min(90%, 90%)."""
    dataset = tf.data.Dataset.from_tensor_slices((np.full((400, 1), 0.5, "float32"), np.zeros(400, "int64"))).batch(400)
    first, second = pgd(steps=5, restarts=1, name="first"), pgd(steps=5, restarts=1, name="second")
    result = evaluate_robustness(
        hidden_corner_classifier(), dataset, epsilons=[0.1], attacks=[first, second], cascade=False
    )
    each = [result["attacks"][name]["accuracy"]["0.1"] for name in ("first", "second")]
    worst = result["worst_case"]["0.1"]
    assert worst < min(each) - 0.03 and 0.72 < worst < 0.9
    assert result["after_each_attack"]["0.1"] == {"first": each[0], "second": worst}
    low, high = result["confidence_95"]["0.1"]
    assert low < worst < high and high - low < 0.1 and result["test_examples"] == 400


def test_the_cascade_attacks_only_what_is_still_robust_and_finds_the_same_worst_case():
    x = np.random.default_rng(3).random((300, 3)).astype("float32")
    y = np.argmax(x @ W, axis=1)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    # No random starts: the attacks are deterministic, so both ways must agree example by example.
    attacks = [
        FGSM,
        pgd(10, 1, relative_step_size=0.25, name="first_pgd"),
        fgsm(name="fgsm_again"),
        Attack(name="pgd_from_x", threat=ThreatModel(epsilon=1.0, steps=20, step_size=0.1, clip_range=(0, 1))),
    ]
    every = evaluate_robustness(linear_classifier(), dataset, epsilons=[0.05, 0.1], attacks=attacks, cascade=False)
    cascade = evaluate_robustness(linear_classifier(), dataset, epsilons=[0.05, 0.1], attacks=attacks)
    assert cascade["worst_case"] == every["worst_case"]
    assert cascade["after_each_attack"] == every["after_each_attack"]
    found = cascade["attacks"]
    # FGSM, every single-step attack and the first multi-step one run on every correct example ...
    for name in ("fgsm", "first_pgd", "fgsm_again"):
        assert found[name]["attacked"] == {"0.05": 300, "0.1": 300} and "accuracy" in found[name]
    # ... the rest only on what every attack before it left robust, with no accuracy of its own.
    robust_before = {k: round(every["after_each_attack"][k]["fgsm_again"] * 300) for k in ("0.05", "0.1")}
    assert found["pgd_from_x"]["attacked"] == robust_before and "accuracy" not in found["pgd_from_x"]
    assert [found[n]["seed"] for n in found] == [0, 1, 2, 3]


def test_the_checks_go_by_settings_not_names():
    checks = sanity_checks(_result([0.6, 0.4], [0.7, 0.3], names=("one_step", "many_steps")))
    assert not checks["pgd_not_above_fgsm"]["passed"]
    assert checks["pgd_not_above_fgsm"]["violations"][0]["single_step"] == "one_step"


def masked_classifier(threshold=60):
    """Rounds every pixel first: zero gradient everywhere, so gradient attacks cannot move.

    Class 1 wins when more than `threshold` of the 64 pixels round up to 1.
    """
    inputs = keras.Input((8, 8, 1))
    count = keras.ops.sum(keras.ops.round(inputs), axis=[1, 2, 3])
    logits = keras.ops.stack([threshold - count, count - threshold], axis=1)
    return keras.Model(inputs, logits)


def test_square_finds_what_a_masked_model_hides_from_gradient_attacks():
    from nsladv.robustness.square import Square

    x = np.full((20, 8, 8, 1), 0.45, "float32")  # every pixel rounds down: class 0, correct
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(20, "int64"))).batch(10)
    attacks = [Square(queries=1000), FGSM, pgd(steps=10, restarts=2)]  # the black box first: order does not matter
    for cascade in (False, True):
        result = evaluate_robustness(masked_classifier(), dataset, epsilons=[0.1], attacks=attacks, cascade=cascade)
        assert list(result["attacks"]) == ["fgsm", "pgd10", "square"]  # the black box runs last
        assert {name: a["fooled"]["0.1"] for name, a in result["attacks"].items()} == {
            "fgsm": 0,
            "pgd10": 0,
            "square": 20,
        }
        assert result["worst_case"]["0.1"] == 0.0 and result["black_box_only"] == {"0.1": 20}
        check = result["sanity"]["black_box_finds_nothing_new"]
        assert not check["passed"]
        # 20 restarts of APGD-CE, from random or output-diversified starts, and FAB-T's linearized boundary cannot
        # move either: the retry reads it as masking
        assert result["black_box_retry"]["examples"] == {"0.1": 20} and result["black_box_retry"]["found"] == {"0.1": 0}
        # the rounding gives no gradient at all: along Square's paths it predicts none of the margin's fall
        assert check["white_box_retry"]["reading"] == (
            "20 stay hidden from gradient attacks: suspect masked gradients (the input gradient accounts for the "
            "margin's fall along 0 of 20 black-box paths checked)"
        )
        paths = result["black_box_retry"]["path_checks"]["0.1"]
        assert [p["example"] for p in paths] == list(range(20))
        assert all(p["gradient_fall"] == 0 and p["fall"] > 0 and not p["gradients_account"] for p in paths)
        assert check_summary(result) == (
            "FAILED: black_box_finds_nothing_new (apgd-ce-x20 + apgd-ce-odi-x20 + fab-t-9x5 found 0 of 20 at 0.1: "
            "20 stay hidden from gradient attacks: suspect masked gradients (the input gradient accounts for the "
            "margin's fall along 0 of 20 black-box paths checked))"
        )
        # the retry's APGD-T needs 4 classes; this model has 2
        assert result["black_box_retry"]["skipped"] == {"apgd-t-9x20": "needs at least 4 classes; the model has 2"}


def test_the_retry_tells_too_few_restarts_from_masking():
    """A white-box set too weak to find what Square finds on an honest model: the retry finds every one."""
    from nsladv.robustness.square import Square

    model, dataset = honest_linear_task(seed=1, examples=40, classes=4)
    timid = pgd(2, 1, relative_step_size=0.01, name="timid")  # two tiny steps from a random start
    result = evaluate_robustness(model, dataset, epsilons=[0.05], attacks=[timid, Square(queries=300)])
    hidden = result["black_box_only"]["0.05"]
    assert hidden > 0
    assert result["black_box_retry"]["found"] == {"0.05": hidden}
    assert set(result["black_box_retry"]["found_by"]) == {"apgd-ce-x20", "apgd-t-9x20", "apgd-ce-odi-x20", "fab-t-9x5"}
    assert "skipped" not in result["black_box_retry"]
    check = result["sanity"]["black_box_finds_nothing_new"]
    assert not check["passed"]
    assert check["white_box_retry"]["reading"] == "too few white-box restarts, not masked gradients"
    # the retry changes no accuracy
    no_retry = evaluate_robustness(
        model, dataset, epsilons=[0.05], attacks=[timid, Square(queries=300)], black_box_retry=None
    )
    assert "black_box_retry" not in no_retry and no_retry["worst_case"] == result["worst_case"]


def test_square_finds_nothing_new_on_an_honest_model():
    from nsladv.robustness.square import Square

    model, dataset = honest_linear_task(seed=0, examples=60)
    result = evaluate_robustness(model, dataset, epsilons=[0.02], attacks=[pgd(20, 1), Square(queries=200)])
    assert result["sanity"]["black_box_finds_nothing_new"]["passed"], result["black_box_only"]


def only_square_fools(examples, epsilon, **settings):
    """FGSM and Square on the masked model, on digits at 0.49: only Square moves them, and the retry cannot."""
    from nsladv.robustness.square import Square

    x = np.full((examples, 8, 8, 1), 0.49, "float32")
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(examples, "int64"))).batch(examples)
    attacks = [FGSM, Square(queries=300)]
    return evaluate_robustness(masked_classifier(), dataset, epsilons=[epsilon], attacks=attacks, **settings)


def test_the_retry_attacks_at_the_epsilon_itself_not_its_printed_key(monkeypatch):
    """Reports key epsilons by their `:g` text (8/255 -> "0.0313725"); every attack, the retry included, gets the
    radius itself."""
    from nsladv.robustness import retry as retry_module

    seen = []
    real = retry_module.robust_rows

    def spy(attacker, x, y, rows, batch_size, epsilon):
        seen.append(epsilon)
        return real(attacker, x, y, rows, batch_size, epsilon)

    monkeypatch.setattr(retry_module, "robust_rows", spy)
    result = only_square_fools(examples=6, epsilon=8 / 255)  # 8/255 is enough for Square
    assert result["black_box_retry"]["examples"] == {"0.0313725": 6}
    assert set(seen) == {8 / 255}


def test_the_retry_reading_counts_one_hidden_example_in_the_singular():
    """The summary line is read by people: "1 stays hidden", not "1 stay hidden"."""
    result = only_square_fools(examples=1, epsilon=0.1)
    reading = result["sanity"]["black_box_finds_nothing_new"]["white_box_retry"]["reading"]
    assert reading.startswith("1 stays hidden from gradient attacks: suspect masked gradients (")
    assert reading.endswith("along 0 of 1 black-box paths checked)")


def test_the_path_check_is_capped_and_never_reads_an_unchecked_example_as_a_search_miss(monkeypatch):
    """At most PATH_EXAMPLES examples a radius are checked (the rest counted); an example Square does not fool again
    gets no point, and the reading stays "suspect masked gradients"."""
    from nsladv.robustness import retry as retry_module

    monkeypatch.setattr(retry_module, "PATH_EXAMPLES", 3)
    result = only_square_fools(examples=5, epsilon=0.1)
    retry = result["black_box_retry"]
    assert [p["example"] for p in retry["path_checks"]["0.1"]] == [0, 1, 2]
    assert retry["path_examples_left"] == {"0.1": 2}
    reading = result["sanity"]["black_box_finds_nothing_new"]["white_box_retry"]["reading"]
    assert reading.endswith("along 0 of 3 black-box paths checked)")
    monkeypatch.setattr(retry_module, "PATH_EXAMPLES", 50)
    monkeypatch.setattr(retry_module, "PATH_TRIES", 0)  # Square never runs again: no point to check
    result = only_square_fools(examples=4, epsilon=0.1)
    hidden = result["black_box_retry"]["hidden_examples"]["0.1"]
    assert hidden
    assert result["black_box_retry"]["path_checks"] == {"0.1": [{"example": i, "point": None} for i in hidden]}
    reading = result["sanity"]["black_box_finds_nothing_new"]["white_box_retry"]["reading"]
    assert reading.endswith(
        f"suspect masked gradients (the input gradient accounts for the margin's fall along 0 of "
        f"{len(hidden)} black-box paths checked)"
    )


def test_the_retry_tells_a_search_miss_from_masking_by_the_gradient_along_the_path():
    """An honest linear model, and a retry too timid to find what Square finds: the examples stay hidden, but the
    gradient predicts the margin's fall along Square's path exactly (a linear margin), so the reading is a search miss.
    """
    from nsladv.robustness.square import Square

    model, dataset = honest_linear_task(seed=1, examples=40, classes=4)
    timid = pgd(2, 1, relative_step_size=0.01, name="timid")
    attacks = [timid, Square(queries=300)]
    result = evaluate_robustness(
        model, dataset, epsilons=[0.05], attacks=attacks, black_box_retry=pgd(2, 1, relative_step_size=0.01)
    )
    hidden = result["black_box_retry"]["hidden_examples"]["0.05"]
    assert hidden and set(hidden) <= set(result["black_box_only_examples"]["0.05"])
    paths = result["black_box_retry"]["path_checks"]["0.05"]
    assert [p["example"] for p in paths] == hidden
    assert all(p["ratio"] == pytest.approx(1.0, abs=1e-3) and p["gradients_account"] for p in paths), paths
    assert all(p["margin_clean"] > 0 > p["margin_adversarial"] for p in paths)
    reading = result["sanity"]["black_box_finds_nothing_new"]["white_box_retry"]["reading"]
    count = len(hidden)
    assert reading == (
        f"{count} {'stays' if count == 1 else 'stay'} hidden from gradient attacks, yet the input gradient accounts "
        "for the margin's fall along the black-box attack's path (ratio 1.00, "
        f"{count} of {count}): a search miss, not masked gradients"
    )
    assert not result["sanity"]["black_box_finds_nothing_new"]["passed"]  # the check itself still fails


def test_the_gradient_path_check_by_hand():
    """On the linear model the margin logit_0 - logit_1 is x @ (W0 - W1); the gradient's integral is its exact fall."""
    from nsladv.robustness.retry import gradient_path_check

    x = np.array([[0.5, 0.0, 0.2]], "float32")  # margin 2 * 0.5 - 3 * 0.2 = 0.4
    x_adv = np.array([[0.4, 0.0, 0.4]], "float32")  # margin 0.8 - 1.2 = -0.4
    (check,) = gradient_path_check(linear_classifier(), x, [0], x_adv)
    assert check["margin_clean"] == pytest.approx(0.4, abs=1e-4)
    assert check["margin_adversarial"] == pytest.approx(-0.4, abs=1e-4)
    assert check["fall"] == pytest.approx(0.8, abs=1e-4) and check["gradient_fall"] == pytest.approx(0.8, abs=1e-4)
    assert check["ratio"] == pytest.approx(1.0, abs=1e-3) and check["gradients_account"]
    # the masked model: a rounding layer carries no gradient, so none of the fall is predicted
    x = np.full((1, 8, 8, 1), 0.45, "float32")
    (check,) = gradient_path_check(masked_classifier(), x, [0], x + 0.1)
    assert check["fall"] > 0 and check["gradient_fall"] == 0 and check["ratio"] == 0 and not check["gradients_account"]


def test_the_gradient_path_check_refuses_bad_input():
    from nsladv.robustness.retry import gradient_path_check

    with pytest.raises(ValueError, match=r"`points` must be an integer >= 2. Received: points=1"):
        gradient_path_check(linear_classifier(), X, Y, X, points=1)
    with pytest.raises(ValueError, match=r"Received: x \(2, 3\), x_adv \(1, 3\), 2 labels"):
        gradient_path_check(linear_classifier(), X, Y, X[:1])


def test_the_report_names_the_examples_only_the_black_box_fooled():
    """Which examples, by position in the evaluated set, so that a failed check can be looked into."""
    from nsladv.robustness.square import Square

    x = np.full((8, 8, 8, 1), 0.2, "float32")  # far below the rounding edge: nothing moves them at 0.05
    x[::3] = 0.49  # rows 0, 3 and 6 sit at the edge: Square fools them, gradients cannot
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(8, "int64"))).batch(4)
    result = evaluate_robustness(masked_classifier(), dataset, epsilons=[0.05], attacks=[FGSM, Square(queries=300)])
    assert result["black_box_only_examples"] == {"0.05": [0, 3, 6]}
    assert result["black_box_retry"]["hidden_examples"] == {"0.05": [0, 3, 6]}


def test_the_retry_runs_its_attacks_in_turn_on_what_the_ones_before_left():
    """APGD-CE with 20 restarts, then APGD-T on every target class, then APGD-CE from output-diversified starts, then
    FAB-T: on all 10,000 test digits the first left one digit Square had fooled, and the second found it
    (docs/results.md); each attacks only what is left."""
    from nsladv.robustness import retry as retry_module
    from nsladv.robustness.square import Square

    assert [a.name for a in retry_module.BLACK_BOX_RETRY] == [
        "apgd-ce-x20",
        "apgd-t-9x20",
        "apgd-ce-odi-x20",
        "fab-t-9x5",
    ]
    assert [a.get_config()["odi_steps"] for a in retry_module.BLACK_BOX_RETRY[:3]] == [0, 0, 2]
    assert [a.get_config()["target_classes"] for a in retry_module.BLACK_BOX_RETRY[1::2]] == [9, 9]
    model, dataset = honest_linear_task(seed=1, examples=40)
    timid = pgd(2, 1, relative_step_size=0.01, name="timid")
    useless = pgd(1, 1, relative_step_size=1e-6, name="useless")  # one step from a random start far too small
    result = evaluate_robustness(
        model, dataset, epsilons=[0.05], attacks=[timid, Square(queries=300)], black_box_retry=(useless, pgd(20, 3))
    )
    hidden = result["black_box_only"]["0.05"]
    retry = result["black_box_retry"]
    assert hidden > 0 and retry["name"] == "useless + pgd20"
    assert [c["name"] for c in retry["attacks"]] == ["useless", "pgd20"]
    assert retry["found"] == {"0.05": hidden} and retry["hidden_examples"] == {"0.05": []}
    first, second = retry["found_by"]["useless"]["0.05"], retry["found_by"]["pgd20"]["0.05"]
    assert first + second == hidden and second > 0
    assert retry["seeds"] == [result["attacks"]["square"]["seed"] + 1, result["attacks"]["square"]["seed"] + 2]


def test_a_retry_that_is_not_white_box_attacks_is_refused_before_any_attack_runs():
    from nsladv.robustness.square import Square

    model, dataset = honest_linear_task(seed=0, examples=4)
    for retry in ((), "apgd-ce", Square(queries=10), [pgd(2, 1), Square(queries=10)]):
        with pytest.raises(
            ValueError, match=r"`black_box_retry` must be a white-box attack .* Received: black_box_retry="
        ):
            evaluate_robustness(model, dataset, epsilons=[0.1], attacks=[FGSM], black_box_retry=retry)


def test_a_closest_in_the_retry_is_refused_rather_than_run_on_every_hidden_example():
    """The retry attacks every example only the black box fooled: a `Closest`'s share would be silently ignored."""
    from nsladv.robustness.closest import Closest

    model, dataset = honest_linear_task(seed=0, examples=4)
    closest = Closest(attack=pgd(2, 1), share=0.5)
    for retry in (closest, [pgd(2, 1), closest]):
        with pytest.raises(ValueError, match=r"runs on every example .* Pass its attack .* Received: .*Closest\("):
            evaluate_robustness(model, dataset, epsilons=[0.1], attacks=[FGSM], black_box_retry=retry)


def test_a_retry_the_model_cannot_take_says_so_and_reads_nothing_into_it():
    """Only APGD-T for a 2-class model: nothing runs, so the check must not call the examples masked."""
    from nsladv.robustness.apgd import apgd_t

    result = only_square_fools(examples=2, epsilon=0.1, black_box_retry=apgd_t())
    assert result["black_box_retry"] == {"skipped": {"apgd-t": "needs at least 4 classes; the model has 2"}}
    check = result["sanity"]["black_box_finds_nothing_new"]
    assert not check["passed"] and "white_box_retry" not in check


def test_the_retry_attacks_need_names_of_their_own():
    model, dataset = honest_linear_task(seed=0, examples=4)
    with pytest.raises(ValueError, match=r"names of their own .* Received: names \['pgd2', 'pgd2'\]"):
        evaluate_robustness(model, dataset, epsilons=[0.1], attacks=[FGSM], black_box_retry=[pgd(2, 1), pgd(2, 1)])


class Recording(AttackSettings):
    """A white-box attack of the user's own (the protocol: `AttackSettings`) that fools nothing and records the inputs
    it is run on (their first pixel)."""

    name = "recording"

    def __init__(self):
        self.seen = []

    def get_config(self):
        return {"name": self.name}

    def batch_attacker(self, model, *, from_logits=True, seed=None):
        recording = self

        class Attacker(Counter):
            def batch_masks(self, x, y, epsilon):
                recording.seen.extend(np.asarray(x).reshape(len(x), -1)[:, 0].tolist())
                right = tf.argmax(model(x, training=False), -1) == y
                return right, right

        return Attacker()


def clean_margins_by_hand(model, dataset):
    """The dataset's images, and each one's label logit minus the best other logit (NumPy)."""
    x, y = (np.concatenate([np.asarray(t) for t in part]) for part in zip(*dataset))
    logits = model.predict(x, verbose=0)
    others = np.where(np.eye(logits.shape[1], dtype=bool)[y], -np.inf, logits)
    return x, logits[np.arange(len(y)), y] - others.max(1)


def test_closest_reattacks_only_the_share_the_attacks_before_it_came_closest_to_fooling():
    """FGSM tracks no margin, so the examples still robust rank by their clean margin; APGD's tracked margins rank
    them once it has run. Either way the Closest attack sees the closest share, and the others stay robust."""
    from nsladv.robustness import APGD
    from nsladv.robustness.closest import Closest

    model, dataset = honest_linear_task(seed=3, examples=40, classes=3)
    x, clean_margin = clean_margins_by_hand(model, dataset)
    epsilon = 1e-4
    plain = evaluate_robustness(model, dataset, epsilons=[epsilon], attacks=[FGSM], black_box_retry=None)
    recording = Recording()
    result = evaluate_robustness(
        model, dataset, epsilons=[epsilon], attacks=[FGSM, Closest(attack=recording, share=0.25)], black_box_retry=None
    )
    assert plain["worst_case"] == {"0.0001": 1.0}  # every example correct clean, and FGSM this small fools none
    assert result["worst_case"] == {"0.0001": 1.0}  # the examples it does not re-attack stay robust
    chosen = np.argsort(clean_margin)[:10]  # ceil(0.25 * 40)
    assert sorted(recording.seen) == sorted(x.reshape(40, -1)[chosen, 0].tolist())
    entry = result["attacks"]["recording-closest"]
    assert entry["attacked"] == {"0.0001": 10} and entry["fooled"] == {"0.0001": 0}
    assert entry["config"] == {"name": "recording-closest", "share": 0.25, "attack": recording.get_config()}
    # after APGD (the first attack: seed 0, on every example in the dataset's batches) the ranking is by the
    # smallest margin its iterates reached, which its own attacker reports alike; here that picks other examples
    # than the clean margins would
    model, dataset = honest_linear_task(seed=5, examples=40, classes=3)
    x, clean_margin = clean_margins_by_hand(model, dataset)
    apgd = APGD(name="apgd-ce", steps=10)
    _, robust, reached = apgd.batch_attacker(model, seed=0).masks_and_margins(dataset, 0.05)
    recording = Recording()
    evaluate_robustness(
        model, dataset, epsilons=[0.05], attacks=[apgd, Closest(attack=recording, share=0.1)], black_box_retry=None
    )
    left = np.flatnonzero(robust)
    assert left.size == 30  # so the share is 3 examples
    chosen = left[np.argsort(reached[left])[:3]]
    assert set(chosen) != set(left[np.argsort(clean_margin[left])[:3]])
    assert sorted(recording.seen) == sorted(x.reshape(40, -1)[chosen, 0].tolist())


def test_closest_settings_are_checked():
    from nsladv.robustness import APGD
    from nsladv.robustness.closest import Closest
    from nsladv.robustness.square import Square

    assert Closest(attack=APGD(name="apgd-ce-x20", restarts=20)).name == "apgd-ce-x20-closest"
    for attack in (Square(queries=10), "apgd-ce", Closest(attack=FGSM)):
        with pytest.raises(ValueError, match=r"`Closest` re-runs a white-box attack .* Received: attack="):
            Closest(attack=attack)
    for share in (0, 1.5, True, "5%"):
        with pytest.raises(ValueError, match=r"`share` must be a fraction in \(0, 1\]. Received: share="):
            Closest(attack=FGSM, share=share)
