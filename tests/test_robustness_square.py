"""The Square Attack's window schedule, against the piecewise schedule its reference code states."""

import pytest

from nsladv.robustness import Square
from nsladv.robustness import attack_set
from nsladv.robustness.square import SquareAttacker


def reference_share(p_init, iteration, queries, rescale):
    """The window's share as the reference code's `p_selection` writes it, branch by branch."""
    it = int(iteration / queries * 10000) if rescale else iteration
    for low, high, divisor in (
        (10, 50, 2),
        (50, 200, 4),
        (200, 500, 8),
        (500, 1000, 16),
        (1000, 2000, 32),
        (2000, 4000, 64),
        (4000, 6000, 128),
        (6000, 8000, 256),
    ):
        if low < it <= high:
            return p_init / divisor
    return p_init / 512 if it > 8000 else p_init


@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("queries", [1000, 5000, 777])
def test_the_schedule_is_the_references_step_for_step(queries, rescale):
    attacker = SquareAttacker(None, Square(queries=queries, rescale_schedule=rescale), seed=0)
    for iteration in range(queries):
        assert attacker._share(iteration) == reference_share(0.8, iteration, queries, rescale), iteration


def test_the_full_set_runs_square_as_autoattack_builds_it():
    (square,) = [a for a in attack_set("full") if isinstance(a, Square)]
    assert (square.queries, square.p_init, square.rescale_schedule) == (5000, 0.8, False)
    assert square.get_config()["rescale_schedule"] is False  # the report records it
