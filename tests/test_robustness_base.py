"""What every attack builds on (`nsladv.robustness.base`): seeds."""

import numpy as np
import pytest

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
