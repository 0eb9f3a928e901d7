"""Robust accuracy at an epsilon grid, with gradient-masking sanity checks."""

import time

from nsladv.robustness.attacks import FGSM
from nsladv.robustness.attacks import pgd

# Accuracy differences within this are read as equal (a few examples of 1,000).
TOLERANCE = 0.005


def evaluate_robustness(
    model,
    dataset,
    *,
    epsilons,
    attacks=None,
    from_logits=True,
    large_epsilon=None,
    near_zero=0.1,
):
    """White-box robust accuracy of `model` on `dataset` at each epsilon.

    Args:
        model: the Keras classifier (the model being evaluated is the one
            attacked).
        dataset: a batched `tf.data.Dataset` of `(x, y)`.
        epsilons: the grid of radii (> 0).
        attacks: a sequence of `Attack`s or `APGD`s (default FGSM and PGD-40
            with 3 restarts, L-inf, inputs in [0, 1]).
        from_logits: whether the model outputs logits.
        large_epsilon: a radius large enough to destroy any image (e.g. 0.5
            for L-inf on [0, 1]); the strongest attack must drive accuracy
            below `near_zero` there, else gradients are masked.
        near_zero: the accuracy threshold of that check.

    Returns:
        A JSON-ready dict: `clean_accuracy`, `examples`, per-attack
        `accuracy` by epsilon, `seconds` by attack, and `sanity` checks
        (`pgd_not_above_fgsm`, `monotone_in_epsilon`,
        `large_epsilon_near_zero`) each with `passed` and details.
    """
    attacks = list(attacks or (FGSM, pgd()))
    epsilons = sorted(float(e) for e in epsilons)
    if not epsilons or epsilons[0] <= 0:
        raise ValueError(f"`epsilons` must be a non-empty list of values > 0. Received: epsilons={epsilons!r}")
    results = {"epsilons": epsilons, "attacks": {}, "seconds": {}, "clean_accuracy": None}
    for attack in attacks:
        attacker = attack.batch_attacker(model, from_logits=from_logits)
        start = time.perf_counter()
        accuracy = {}
        for epsilon in epsilons:
            clean, robust, total = attacker.accuracy(dataset, epsilon)
            accuracy[_key(epsilon)] = robust
        results["attacks"][attack.name] = {"config": attack.get_config(), "accuracy": accuracy}
        results["seconds"][attack.name] = round(time.perf_counter() - start, 3)
        results["clean_accuracy"], results["examples"] = clean, total
    if large_epsilon is not None:  # The last attacker is the strongest attack's, already compiled.
        results["large_epsilon"] = {
            "epsilon": large_epsilon,
            "attack": attacks[-1].name,
            "accuracy": attacker.accuracy(dataset, large_epsilon)[1],
        }
    results["sanity"] = sanity_checks(results, near_zero=near_zero)
    return results


def _key(epsilon):
    return f"{epsilon:g}"


def sanity_checks(results, *, near_zero=0.1):
    """Gradient-masking checks on an `evaluate_robustness` result.

    - `pgd_not_above_fgsm`: a multi-step attack is at least as strong as FGSM.
    - `monotone_in_epsilon`: accuracy does not rise with epsilon.
    - `large_epsilon_near_zero`: at a destroying epsilon accuracy is near 0.
    """
    keys = [_key(e) for e in results["epsilons"]]
    checks = {}
    attacks = results["attacks"]
    if "fgsm" in attacks and len(attacks) > 1:
        violations = [
            {"attack": name, "epsilon": k, "accuracy": a["accuracy"][k], "fgsm": attacks["fgsm"]["accuracy"][k]}
            for name, a in attacks.items()
            if name != "fgsm"
            for k in keys
            if a["accuracy"][k] > attacks["fgsm"]["accuracy"][k] + TOLERANCE
        ]
        checks["pgd_not_above_fgsm"] = {"passed": not violations, "violations": violations}
    violations = []
    for name, a in attacks.items():
        curve = [results["clean_accuracy"]] + [a["accuracy"][k] for k in keys]
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
