"""robustkit.utils.check_positive_int, and that the constructors which use it refuse the same values."""

import pytest

from robustkit import InputError
from robustkit.attacks import APGD, PGD, AutoAttack, BPDAEOT
from robustkit.utils import check_positive_int


@pytest.mark.parametrize("value", [1, 7, 10**12])
def test_accepts_positive_ints(value):
    assert check_positive_int("n", value) == value


@pytest.mark.parametrize("value", [0, -3, True, False, 2.0, "3", None])
def test_refuses_everything_else_naming_the_argument(value):
    with pytest.raises(InputError, match=r"^steps must be a positive int, got "):
        check_positive_int("steps", value)


def test_none_ok_passes_none_and_says_so_in_the_message():
    assert check_positive_int("limit", None, none_ok=True) is None
    with pytest.raises(InputError, match=r"limit must be a positive int or None, got 0"):
        check_positive_int("limit", 0, none_ok=True)


# Before the shared helper, PGD, APGD and BPDA-EOT accepted steps=True as one step (bool is an int).
@pytest.mark.parametrize("make", [
    lambda v: PGD(eps=0.1, steps=v),
    lambda v: PGD(eps=0.1, eot=v),
    lambda v: APGD(eps=0.1, steps=v),
    lambda v: BPDAEOT(eps=0.1, recheck=v),
    lambda v: AutoAttack(eps=0.1, version="rand", steps=v),
])
@pytest.mark.parametrize("value", [True, 0, 1.5])
def test_attack_budgets_refuse_bools_zero_and_floats(make, value):
    with pytest.raises(InputError, match="must be a positive int"):
        make(value)
