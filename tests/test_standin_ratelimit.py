"""The stand-in's limits stack as the spec describes (a pure test of its limiter)."""

from __future__ import annotations

from klaviyo_standin.ratelimit import RateLimiter


def test_stacked_buckets_refuse_together_and_report_the_endpoint_window():
    now = [100.0]
    limiter = RateLimiter(clock=lambda: now[0])
    endpoint = (("key", "op"), 75, 750)
    count = (("key", "op:profile_count"), 1, 15)
    first = limiter.check_stacked([endpoint, count])
    assert first.allowed and first.limit == 750 and first.remaining == 749  # the endpoint's window
    second = limiter.check_stacked([endpoint, count])  # same second: the stacked burst of 1 is spent
    assert not second.allowed and second.retry_after >= 1
    plain = limiter.check(*endpoint)  # the refusal consumed nothing of the endpoint's window
    assert plain.allowed and plain.remaining == 748
    for i in range(14):  # 15 per minute in all, one per second
        now[0] += 1.0
        assert limiter.check_stacked([endpoint, count]).allowed, i
    now[0] += 1.0
    refused = limiter.check_stacked([endpoint, count])
    assert not refused.allowed and refused.remaining == 750 - 16  # steady cap of the stacked bucket
