"""Robust accuracy at an epsilon grid, with gradient-masking sanity checks."""

import math
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
    progress=None,
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
        progress: called as `progress(attack name, epsilon, robust accuracy,
            seconds)` after each attack at each epsilon (e.g. to log it).

    Returns:
        A JSON-ready dict: `clean_accuracy`, `examples` (also as
        `test_examples`), per-attack `accuracy` by epsilon, `worst_case` by
        epsilon (the share of examples correct clean and under every attack
        and restart, counted example by example: never the minimum of the
        per-attack accuracies), `after_each_attack` (the worst case over the
        first 1, 2, ... attacks, in the given order), `confidence_95` (the
        Wilson interval of the worst case), `seconds` by attack, and `sanity`
        checks (`pgd_not_above_fgsm`, `monotone_in_epsilon`,
        `large_epsilon_near_zero`) each with `passed` and details.
    """
    attacks = list(attacks or (FGSM, pgd()))
    epsilons = sorted(float(e) for e in epsilons)
    if not epsilons or epsilons[0] <= 0:
        raise ValueError(f"`epsilons` must be a non-empty list of values > 0. Received: epsilons={epsilons!r}")
    names = [a.name for a in attacks]
    if len(set(names)) != len(names):
        raise ValueError(f"Every attack needs a name of its own (reports key on it). Received: names {names}")
    results = {"epsilons": epsilons, "attacks": {}, "seconds": {}, "clean_accuracy": None}
    robust_so_far = {}  # epsilon key -> examples robust to every attack so far
    white_box = {}  # epsilon key -> examples robust to every white-box attack
    curves = {_key(e): [] for e in epsilons}
    attackers = {}
    for attack in attacks:
        attackers[attack.name] = attacker = attack.batch_attacker(model, from_logits=from_logits)
        start = time.perf_counter()
        accuracy = {}
        for epsilon in epsilons:
            key = _key(epsilon)
            started = time.perf_counter()
            clean, robust = attacker.masks(dataset, epsilon)
            accuracy[key] = float(robust.mean())
            if progress is not None:
                progress(attack.name, epsilon, accuracy[key], time.perf_counter() - started)
            robust_so_far[key] = robust & robust_so_far.get(key, clean)
            if not _black_box(attack):
                white_box[key] = robust & white_box.get(key, clean)
            curves[key].append(float(robust_so_far[key].mean()))
        results["attacks"][attack.name] = {"config": attack.get_config(), "accuracy": accuracy}
        results["seconds"][attack.name] = round(time.perf_counter() - start, 3)
        results["clean_accuracy"], results["examples"] = float(clean.mean()), len(clean)
    results["test_examples"] = results["examples"]
    results["worst_case"] = {key: float(mask.mean()) for key, mask in robust_so_far.items()}
    results["after_each_attack"] = {key: dict(zip(names, curve)) for key, curve in curves.items()}
    results["confidence_95"] = {key: wilson_interval(int(mask.sum()), len(mask)) for key, mask in robust_so_far.items()}
    if white_box and any(_black_box(a) for a in attacks):
        # Examples a black-box attack fooled that every white-box attack left robust.
        results["black_box_only"] = {key: int((white_box[key] & ~robust_so_far[key]).sum()) for key in robust_so_far}
    gradient_attacks = [a for a in attacks if not _black_box(a)]
    if large_epsilon is not None and gradient_attacks:
        # The white-box attack strongest at the largest epsilon, whatever its place in the list.
        top = _key(epsilons[-1])
        strongest = min(gradient_attacks, key=lambda a: results["attacks"][a.name]["accuracy"][top])
        results["large_epsilon"] = {
            "epsilon": large_epsilon,
            "attack": strongest.name,
            "accuracy": attackers[strongest.name].accuracy(dataset, large_epsilon)[1],
        }
    results["sanity"] = sanity_checks(results, near_zero=near_zero)
    return results


def _black_box(attack):
    return bool(attack.get_config().get("black_box"))


def _key(epsilon):
    return f"{epsilon:g}"


def _steps(attack_result):
    """Gradient steps of an attack from its reported settings (None for a black-box attack)."""
    config = attack_result.get("config", {})
    if config.get("black_box"):
        return None
    if "threat" in config:
        return config["threat"]["steps"]
    return config.get("steps")


def wilson_interval(successes, n, z=1.959964):
    """The Wilson score interval of a proportion (95% by default), as [low, high]."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, center - half), 6), round(min(1.0, center + half), 6)]


def sanity_checks(results, *, near_zero=0.1):
    """Gradient-masking checks on an `evaluate_robustness` result, whatever the attacks' names and order.

    - `pgd_not_above_fgsm`: every multi-step white-box attack is at least as
      strong as every single-step one (FGSM), told apart by their settings.
    - `monotone_in_epsilon`: accuracy does not rise with epsilon.
    - `large_epsilon_near_zero`: at a destroying epsilon accuracy is near 0.
    - `black_box_finds_nothing_new`: a black-box attack (Square) fooled no
      example that every white-box attack left robust.
    """
    keys = [_key(e) for e in results["epsilons"]]
    checks = {}
    attacks = results["attacks"]
    single = {n: a for n, a in attacks.items() if _steps(a) == 1}
    multi = {n: a for n, a in attacks.items() if _steps(a) not in (1, None)}
    if single and multi:
        violations = [
            {
                "attack": name,
                "epsilon": k,
                "accuracy": a["accuracy"][k],
                "single_step": s_name,
                "single_step_accuracy": s["accuracy"][k],
            }
            for name, a in multi.items()
            for s_name, s in single.items()
            for k in keys
            if a["accuracy"][k] > s["accuracy"][k] + TOLERANCE
        ]
        checks["pgd_not_above_fgsm"] = {"passed": not violations, "violations": violations}
    if "black_box_only" in results:
        found = {k: n for k, n in results["black_box_only"].items() if n > 0}
        checks["black_box_finds_nothing_new"] = {"passed": not found, "examples_by_epsilon": found}
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
