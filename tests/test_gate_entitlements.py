"""The entitlement rules as pure functions: what each Stripe status grants, and until when."""

from __future__ import annotations

import math
from datetime import datetime, timezone

from odsmedia.billing.entitlements import Grant, decide, grant_of, merge

NOW = 1_800_000_000.0
GRACE = 3 * 86400.0


def row(status: str, *, period_end: float | None = NOW + 86400, cancel: bool = False,
        past_due_since: float | None = None) -> dict:
    ts = lambda v: None if v is None else datetime.fromtimestamp(v, timezone.utc)  # noqa: E731
    return {"status": status, "current_period_end": ts(period_end), "cancel_at_period_end": cancel,
            "past_due_since": ts(past_due_since)}


def test_active_runs_until_canceled_at_period_end():
    assert grant_of(row("active"), GRACE).until == math.inf
    assert grant_of(row("trialing"), GRACE).until == math.inf
    canceling = grant_of(row("active", cancel=True), GRACE)
    assert canceling == Grant(NOW + 86400, "subscription_ended")


def test_past_due_keeps_access_for_the_grace_period():
    grant = grant_of(row("past_due", past_due_since=NOW - 86400), GRACE)
    assert grant.until == NOW - 86400 + GRACE and grant.lapsed_reason == "payment_past_due"
    assert decide({"pro": grant}, ("pro",), NOW).allowed
    late = decide({"pro": grant}, ("pro",), NOW + 3 * 86400)
    assert not late.allowed and late.reason == "payment_past_due" and late.plans == ("pro",)


def test_canceled_ends_at_period_end_and_others_grant_nothing():
    assert grant_of(row("canceled"), GRACE).until == NOW + 86400
    assert grant_of(row("canceled", period_end=None), GRACE).until == 0.0
    for status in ("incomplete", "incomplete_expired", "unpaid", "paused"):
        assert grant_of(row(status), GRACE) == Grant(0.0, "subscription_inactive")


def test_best_grant_per_plan_and_any_listed_plan_admits():
    grants = merge([("pro", Grant(NOW - 1, "subscription_ended")), ("pro", Grant(NOW + 10, "payment_past_due")),
                    ("team", Grant(NOW - 5, "subscription_ended"))])
    assert grants["pro"].until == NOW + 10
    assert decide(grants, ("team", "pro"), NOW).allowed
    refused = decide(grants, ("team",), NOW)
    assert not refused.allowed and refused.reason == "subscription_ended"
    assert decide({}, ("gold",), NOW).reason == "plan_required"
