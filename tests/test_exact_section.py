"""The Theory section's rows (python/offtd/exact/section.py): every prediction says where it comes from.

The values themselves are checked against independent oracles in tests/test_exact_units.py and
tests/test_model.py; here, that each row carries its explanatory note as text (the report prints it next
to the number), for both orderings of sigma_pi and sigma_mu, which select different rows.
"""

from __future__ import annotations

import pytest

from offtd.exact.section import theory
from test_health_units import make_result, make_spec


@pytest.mark.parametrize("sigma_pi, sigma_mu", [(0.4, 0.5), (0.6, 0.2)])
def test_every_theory_row_has_a_note(sigma_pi, sigma_mu):
    out = theory(make_spec(**{"policy.sigma_pi": sigma_pi, "policy.sigma_mu": sigma_mu}), make_result())
    assert "dist_action_tv" in out and "closed_loop" in out
    assert ("rho_khat (pi/mu)" in out) == (sigma_mu < sigma_pi)
    for name, row in out.items():
        assert isinstance(row["note"], str) and row["note"].strip(), name
    # the TV row says how the measured value differs from the exact one
    assert "exact TV" in out["dist_action_tv"]["note"] and "Monte Carlo" in out["dist_action_tv"]["note"]
