"""Measuring robustness: white-box attacks (FGSM, PGD, Auto-PGD, FAB-T), the black-box Square check, worst cases."""

from nsladv.radii import parse_radii
from nsladv.radii import parse_radius
from nsladv.robustness.apgd import APGD
from nsladv.robustness.apgd import APGDAttacker
from nsladv.robustness.apgd import apgd_ce
from nsladv.robustness.apgd import apgd_t
from nsladv.robustness.attacks import FGSM
from nsladv.robustness.attacks import Attack
from nsladv.robustness.attacks import BatchAttacker
from nsladv.robustness.attacks import adversarial_examples
from nsladv.robustness.attacks import fgsm
from nsladv.robustness.attacks import pgd
from nsladv.robustness.base import AttackSettings
from nsladv.robustness.checks import sanity_checks
from nsladv.robustness.closest import Closest
from nsladv.robustness.evaluation import evaluate_robustness
from nsladv.robustness.fab import FAB
from nsladv.robustness.fab import fab_t
from nsladv.robustness.result import RobustnessResult
from nsladv.robustness.retry import gradient_path_check
from nsladv.robustness.sets import ATTACK_SETS
from nsladv.robustness.sets import attack_set
from nsladv.robustness.sets import fit_attacks
from nsladv.robustness.square import Square

__all__ = [
    "APGD",
    "ATTACK_SETS",
    "APGDAttacker",
    "FAB",
    "FGSM",
    "Attack",
    "AttackSettings",
    "Closest",
    "Square",
    "BatchAttacker",
    "adversarial_examples",
    "apgd_ce",
    "apgd_t",
    "attack_set",
    "evaluate_robustness",
    "fab_t",
    "fit_attacks",
    "parse_radii",
    "parse_radius",
    "RobustnessResult",
    "fgsm",
    "gradient_path_check",
    "pgd",
    "sanity_checks",
]
