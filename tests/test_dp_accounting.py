"""The user-day accountant: GDP conversions, the budget split, the ledger."""
import json
import math

import pytest
from hypothesis import given, settings, strategies as st
from pydp.algorithms.numerical_mechanisms import GaussianMechanism

from schemas.timefmt import parse_rfc3339
from core import dp_accounting as acct
from core.dp_stats import DpParams


@pytest.mark.parametrize("epsilon,delta", [(1.0, 1e-6), (0.1, 1e-8), (3.0, 1e-5), (0.5, 1e-7)])
def test_gdp_noise_matches_google_library_for_one_release(epsilon, delta):
    # Google's library calibrates one Gaussian release with the same analytic bound
    # and rounds sigma up to a binary grid, so ours is at most theirs and within 0.1 %.
    ours = 1.0 / acct.gdp_mu(epsilon, delta)
    theirs = GaussianMechanism(epsilon, delta, 1.0).std
    assert ours <= theirs
    assert ours == pytest.approx(theirs, rel=1e-3)


def test_gdp_conversions_invert_each_other():
    mu = acct.gdp_mu(1.0, 1e-6)
    assert acct.gdp_delta(mu, 1.0) == pytest.approx(1e-6, rel=1e-9)
    assert acct.gdp_epsilon(mu, 1e-6) == pytest.approx(1.0, rel=1e-9)
    # more noise (smaller mu) is strictly more private
    assert acct.gdp_delta(mu * 0.9, 1.0) < 1e-6


def test_jst_day_boundaries():
    assert acct.day_of(parse_rfc3339("2026-11-25T14:59:59Z")) == "2026-11-25"
    assert acct.day_of(parse_rfc3339("2026-11-25T15:00:00Z")) == "2026-11-26"
    assert acct.day_end(parse_rfc3339("2026-11-25T15:00:00Z")) == parse_rfc3339("2026-11-26T15:00:00Z")
    assert acct.hour_start(parse_rfc3339("2026-11-25T15:59:59.9Z")) == parse_rfc3339("2026-11-25T15:00:00Z")


def test_default_noise_scales():
    plan = DpParams().plan()
    mu_day = acct.gdp_mu(1.0, 1e-6)
    footfall = plan.metrics["footfall"]
    # sqrt(K=36) / (mu_day * sqrt(share 0.4)); one hour's release: sqrt(C=3) / sigma
    assert footfall.noise_stddev == pytest.approx(6.0 / (mu_day * math.sqrt(0.4)))
    assert footfall.release_mu == pytest.approx(math.sqrt(3) / footfall.noise_stddev)
    tweets = plan.metrics["tweets"]
    assert tweets.bounds.day_l2_sensitivity == 12.0  # T=2 x sqrt(36)
    assert tweets.noise_stddev == pytest.approx(12.0 / (mu_day * math.sqrt(0.2)))
    # K cannot exceed what the hours and cells allow: 2 hours x 3 cells = 6
    assert DpParams(max_hours_per_day=2).plan().metrics["footfall"].bounds.partitions_per_day == 6


def test_refuses_shares_that_overspend():
    with pytest.raises(ValueError, match=r"add up to 1\.2 > 1.*lower the --dp_share_\* values"):
        DpParams(flows=True)  # default shares 0.4+0.2+0.2+0.2 plus flows 0.2
    DpParams(flows=True, share_footfall=0.2)  # fits


@pytest.mark.parametrize("kwargs,message", [
    (dict(epsilon_per_user_day=0.0), "epsilon_per_user_day=0.0: must be a number > 0"),
    (dict(epsilon_per_user_day=-1.0), "must be a number > 0"),
    (dict(epsilon_per_user_day=float("nan")), "must be a number > 0"),
    (dict(delta_per_user_day=0.0), "Gaussian noise needs delta > 0"),
    (dict(delta_per_user_day=1e-3), r"must be in \(0, 1e-5\]"),
    (dict(max_hours_per_day=25), "a day has 24 hourly windows"),
    (dict(max_hours_per_day=0), "choose 1..24"),
    (dict(share_footfall=0, share_footfall_by_age=0, share_tweets=0, share_nfc_touches=0),
     "no metric is enabled"),
    (dict(h3_res=15), "h3_res=15"),
])
def test_refuses_bad_configuration_with_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DpParams(**kwargs)


def _day_ledger(plan):
    """What a full day (all 24 windows released) writes to the ledger."""
    start = parse_rfc3339("2026-11-24T15:00:00Z")  # JST midnight
    return [acct.ledger_row(plan, metric, start + h * 3600, 10)
            for h in range(24) for metric in plan.metrics]


def test_ledger_rows_are_json_and_a_full_day_spends_exactly_the_budget():
    plan = DpParams().plan()
    rows = _day_ledger(plan)
    json.dumps(rows)
    spends = acct.check_ledger(rows, 1.0, 1e-6)
    assert list(spends) == ["2026-11-25"]
    assert spends["2026-11-25"].epsilon == pytest.approx(1.0)
    assert spends["2026-11-25"].delta == pytest.approx(1e-6)
    assert spends["2026-11-25"].releases == 24 * 4


def test_a_second_release_of_a_window_is_an_overspend():
    rows = _day_ledger(DpParams().plan())
    with pytest.raises(acct.BudgetError, match="released twice"):
        acct.check_ledger(rows + rows[:1], 1.0, 1e-6)


share = st.floats(0.0, 1.0)


@settings(max_examples=150, deadline=None)
@given(epsilon=st.floats(0.01, 10.0), delta=st.sampled_from([1e-5, 1e-6, 1e-7, 1e-9, 1e-12]),
       cells=st.integers(1, 5), cells_per_day=st.integers(1, 200), hours=st.integers(1, 24),
       per_cell=st.integers(1, 5), shares=st.tuples(share, share, share, share, share), flows=st.booleans())
def test_no_accepted_configuration_overspends(epsilon, delta, cells, cells_per_day, hours, per_cell, shares,
                                              flows):
    try:
        params = DpParams(epsilon_per_user_day=epsilon, delta_per_user_day=delta,
                          max_cells_per_hour=cells, max_cells_per_day=cells_per_day, max_hours_per_day=hours,
                          max_tweets_per_cell_hour=per_cell, max_touches_per_cell_hour=per_cell,
                          share_footfall=shares[0], share_footfall_by_age=shares[1],
                          share_tweets=shares[2], share_nfc_touches=shares[3],
                          flows=flows, share_flows=shares[4])
    except ValueError:
        enabled = [s for s in shares[:4] + ((shares[4],) if flows else ()) if s > 0]
        assert (not enabled or sum(enabled) > 1 or (flows and shares[4] == 0)
                or min(enabled) < acct.MIN_SHARE)
        return
    plan = params.plan()
    # First principles: what one user can lose from bounds and noise alone.
    eps_spent, delta_spent = acct.worst_case_user_day(plan)
    assert eps_spent <= epsilon * (1 + 1e-6)
    assert delta_spent <= delta * (1 + 1e-6)
    # The ledger of a full day never exceeds the budget.
    spends = acct.check_ledger(_day_ledger(plan), epsilon, delta)
    for spend in spends.values():
        assert spend.epsilon <= epsilon * (1 + 1e-9)
        assert spend.delta <= delta * (1 + 1e-9)
