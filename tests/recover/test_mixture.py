"""The weight update of the dynamic mixture: w ← (1−c)·softmax(log w + η·(L − L_ref)) + c/n."""
import math

import pytest

from lorashear import LorashearError
from lorashear.recover import update_weights

UNIFORM = {"docs": 1 / 3, "docstrings": 1 / 3, "code": 1 / 3}


def test_the_most_degraded_source_gains_weight():
    w = update_weights(UNIFORM, {"docs": 0.05, "docstrings": 0.05, "code": 1.0}, eta=1.0, floor=0.1)
    assert w["code"] > 1 / 3 > w["docs"] and math.isclose(sum(w.values()), 1.0)
    assert math.isclose(w["docs"], w["docstrings"])


def test_floor_keeps_every_source_represented():
    w = update_weights(UNIFORM, {"docs": 0.0, "docstrings": 0.0, "code": 50.0}, eta=1.0, floor=0.3)
    assert min(w.values()) >= 0.3 / 3 - 1e-12


def test_higher_temperature_moves_weights_further():
    dev = {"docs": 0.1, "docstrings": 0.2, "code": 0.6}
    lo = update_weights(UNIFORM, dev, eta=0.5, floor=0.1)
    hi = update_weights(UNIFORM, dev, eta=5.0, floor=0.1)
    assert hi["code"] > lo["code"] > 1 / 3


def test_zero_temperature_keeps_uniform_weights():
    w = update_weights(UNIFORM, {"docs": 0.1, "docstrings": 0.9, "code": 3.0}, eta=0.0, floor=0.1)
    assert all(math.isclose(v, 1 / 3) for v in w.values())


@pytest.mark.parametrize("eta, floor", [(-1, 0.1), (float("nan"), 0.1), (1.0, 1.5), (1.0, -0.1)])
def test_bad_rule_settings_are_refused(eta, floor):
    with pytest.raises(LorashearError):
        update_weights(UNIFORM, {"docs": 0, "docstrings": 0, "code": 0}, eta=eta, floor=floor)
