"""Gradient-masking sanity checks on an evaluation's results, and the interval of a robust accuracy."""

import math

from nsladv.robustness.retry import retry_reading
from nsladv.robustness.rows import gradient_steps
from nsladv.robustness.rows import radius_key

# Accuracy differences within this are read as equal (a few examples of 1,000).
TOLERANCE = 0.005


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
      strong as every single-step one (FGSM), told apart by their settings
      (among the attacks that ran on every example).
    - `monotone_in_epsilon`: accuracy (each such attack's, and the worst
      case) does not rise with epsilon.
    - `large_epsilon_near_zero`: at a destroying epsilon accuracy is near 0.
    - `black_box_finds_nothing_new`: a black-box attack (Square) fooled no
      example that every white-box attack left robust. When it did, and
      `black_box_retry` ran, the check says how many of those examples the
      retry found (`white_box_retry`) and what that suggests.
    """
    keys = [radius_key(e) for e in results["epsilons"]]
    checks = {}
    attacks = {n: a for n, a in results["attacks"].items() if "accuracy" in a}  # ran on every example
    single = {n: a for n, a in attacks.items() if gradient_steps(a) == 1}
    multi = {n: a for n, a in attacks.items() if gradient_steps(a) not in (1, None)}
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
        if found and "found" in results.get("black_box_retry", {}):
            retry = results["black_box_retry"]
            hidden = sum(retry["examples"][k] - retry["found"][k] for k in found)
            checks["black_box_finds_nothing_new"]["white_box_retry"] = {
                "attack": retry["name"],
                "found": {k: retry["found"][k] for k in found},
                "reading": retry_reading(hidden, [c for k in found for c in retry.get("path_checks", {}).get(k, [])]),
            }
    violations = []
    curves = {name: a["accuracy"] for name, a in attacks.items()}
    if "worst_case" in results:
        curves["worst case"] = results["worst_case"]
    for name, accuracy in curves.items():
        curve = [results["clean_accuracy"]] + [accuracy[k] for k in keys]
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
