"""overlong: DAPO's soft overlong punishment on the completion's token count."""

from functools import partial

import pytest

from r1lab.rewards.length import overlong


@pytest.mark.parametrize("length, expected", [
    (0, 0.0), (750, 0.0), (751, -1 / 250), (875, -0.5), (1000, -1.0), (1001, -1.0), (10**6, -1.0),
])
def test_overlong_piecewise(length, expected):
    assert overlong("", completion_length=length, max_length=1000) == pytest.approx(expected)


def test_overlong_cache_length_and_partial():
    assert overlong("", completion_length=950, max_length=1000, cache_length=100) == pytest.approx(-0.5)
    assert overlong("", completion_length=1000, max_length=1000, cache_length=0) == 0.0
    assert overlong("", completion_length=1001, max_length=1000, cache_length=0) == -1.0
    bound = partial(overlong, max_length=1000, cache_length=100)
    assert bound("x", completion_length=950, prompt="?", answer="1") == pytest.approx(-0.5)
    assert bound("x", completion_length=950, max_length=2000) == 0.0  # the example's field wins


def test_overlong_without_max_length_cannot_judge():
    assert overlong("", completion_length=10**6, prompt="?") is None


def test_overlong_rejects_bad_settings():
    with pytest.raises(ValueError):
        overlong("", completion_length=1, max_length=0)
    with pytest.raises(ValueError):
        overlong("", completion_length=1, max_length=100, cache_length=101)
