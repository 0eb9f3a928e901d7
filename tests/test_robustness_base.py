"""What every attack builds on (`nsladv.robustness.base`): seeds, and one compiled function per attacker."""

import logging

import numpy as np
import pytest
from robustness_helpers import honest_linear_task

from nsladv.robustness import apgd_ce
from nsladv.robustness import fab_t
from nsladv.robustness import fgsm
from nsladv.robustness.base import attack_seed


def test_a_seed_is_kept_or_drawn_and_a_bad_one_says_what_it_received():
    assert attack_seed(7) == 7 and attack_seed(np.int64(7)) == 7
    np.random.seed(0)
    first = attack_seed()
    np.random.seed(0)
    assert attack_seed() == first  # drawn from NumPy's generator, which keras.utils.set_random_seed fixes
    for bad in (-1, True, 1.5, "3"):
        with pytest.raises(ValueError, match=r"`seed` must be an integer >= 0. Received: seed="):
            attack_seed(bad)


@pytest.mark.parametrize("attack", [fgsm(), apgd_ce(steps=3), fab_t(steps=3, target_classes=2)], ids=lambda a: a.name)
def test_several_attackers_of_one_kind_do_not_warn_of_retracing(attack):
    """A cascade makes one attacker per attack (and the retry more): each traces once, which is not "retracing".

    TensorFlow counts traces per Python function and warns at 5 of the last 10 calls, at most twice per function; a
    bound method's function is its class's, so six attackers' first traces used to make that warning.
    """
    model, dataset = honest_linear_task(seed=0, examples=8, classes=5)
    x, y = next(iter(dataset))
    logger = logging.getLogger("tensorflow")
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        for seed in range(6):
            attack.batch_attacker(model, seed=seed).batch_masks(x, y, 0.1)
    finally:
        logger.removeHandler(handler)
    assert not [r.getMessage() for r in records if "retracing" in r.getMessage()]
