"""The hourly request budget, stepped by hand."""

from devicelink.budget import RequestBudget


def test_budget_allows_limit_per_rolling_window():
    b = RequestBudget(limit=3, window=100)
    for t in (0, 10, 20):
        assert b.allows(t)
        b.spend(t)
    assert not b.allows(30)
    assert b.next_free(30) == 100  # when the first one leaves the window
    assert b.allows(100.5)


def test_extra_allowance_for_short_token_lifetimes():
    b = RequestBudget(limit=2, window=3600)
    extra = RequestBudget.allowance(lifetime=60)  # 60 s tokens need ~60 refreshes an hour
    assert extra == 120
    for t in range(0, 122 * 10, 10):
        assert b.allows(t, extra)
        b.spend(t)
    assert not b.allows(1220, extra)
    assert RequestBudget.allowance(3600) == 2 and RequestBudget.allowance(0) == 7200
