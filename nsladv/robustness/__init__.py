"""Measuring robustness: white-box attacks and robust accuracy at an epsilon grid, with gradient-masking checks."""

from nsladv.robustness.attacks import FGSM
from nsladv.robustness.attacks import Attack
from nsladv.robustness.attacks import BatchAttacker
from nsladv.robustness.attacks import adversarial_examples
from nsladv.robustness.attacks import fgsm
from nsladv.robustness.attacks import pgd
from nsladv.robustness.evaluation import evaluate_robustness
from nsladv.robustness.evaluation import sanity_checks

__all__ = [
    "FGSM",
    "Attack",
    "BatchAttacker",
    "adversarial_examples",
    "evaluate_robustness",
    "fgsm",
    "pgd",
    "sanity_checks",
]
