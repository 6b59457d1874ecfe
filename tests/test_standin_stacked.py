"""Stacked rate limits (issue #12 item 1): an additional field's own limit (``profile_count``
1/s 15/min) counts on top of the endpoint's (75/s 750/min), in the stand-in and in the
plugin's client, which must never exceed the stricter one whatever the headers say."""

from __future__ import annotations

import threading

import httpx
import pytest

from klaviyo_standin import DEFAULT_API_KEY, REVISION, StandInServer, generate_account
from smartpush_plugin_klaviyo.client import KlaviyoClient
from smartpush_plugin_klaviyo.ratelimit import PROFILE_COUNT_SUFFIX, RateBudgets
from tests.harness import CLOCK_SCALE

HEADERS = {"Authorization": f"Klaviyo-API-Key {DEFAULT_API_KEY}", "revision": REVISION,
           "Accept": "application/vnd.api+json"}


@pytest.fixture(scope="module")
def account():
    return generate_account(300, seed=5)


def _first_list(account) -> str:
    return account.lists()[0]["id"]


def test_standin_stacks_profile_count_on_the_endpoint_limit(account):
    """A profile_count request consumes both buckets; refused when either is exhausted
    (consuming nothing); the headers of a success describe the endpoint's window."""
    limits = {"get_list": (100, 5), "get_list:profile_count": (100, 3)}
    gid = _first_list(account)
    with StandInServer(account, rate_limits=limits, clock_scale=0.01) as server, \
            httpx.Client(base_url=server.base_url, headers=HEADERS, timeout=10) as http:
        counted = {"additional-fields[list]": "profile_count"}
        for n in range(3):
            r = http.get(f"/api/lists/{gid}", params=counted)
            assert r.status_code == 200
            assert r.headers["RateLimit-Limit"] == "5"  # the endpoint's steady window
            assert r.headers["RateLimit-Remaining"] == str(5 - (n + 1))
        refused = http.get(f"/api/lists/{gid}", params=counted)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        # the refusal consumed nothing: the endpoint still has 2 plain requests left
        assert http.get(f"/api/lists/{gid}").status_code == 200
        assert http.get(f"/api/lists/{gid}").status_code == 200
        assert http.get(f"/api/lists/{gid}").status_code == 429
        assert server.stats["429"] == 2


def test_standin_stacks_predictive_analytics_on_profiles(account):
    limits = {"get_profiles": (100, 4), "get_profiles:predictive_analytics": (100, 2)}
    with StandInServer(account, rate_limits=limits, clock_scale=0.01) as server, \
            httpx.Client(base_url=server.base_url, headers=HEADERS, timeout=10) as http:
        extra = {"additional-fields[profile]": "predictive_analytics", "page[size]": "1"}
        assert [http.get("/api/profiles", params=extra).status_code for _ in range(3)] == [200, 200, 429]
        plain = http.get("/api/profiles", params={"page[size]": "1"})
        assert plain.status_code == 200 and plain.headers["RateLimit-Limit"] == "4"
        assert plain.headers["RateLimit-Remaining"] == "1"


def test_client_never_exceeds_the_stacked_profile_count_limit(account):
    """The spec's real limits (75/s 750/min, profile_count 1/s 15/min stacked) on a scaled
    clock: 6 threads ask 30 counts (and 30 plain reads) through KlaviyoClient. 0 429s (the
    stand-in enforces both limits), and the profile_count budget never follows the
    headers (which describe the endpoint's 750/min window): the client before the fix fed
    them to the count budget, which then dropped its 15/min cap and got 429s."""
    scale = CLOCK_SCALE
    lists = [g["id"] for g in account.lists()]
    with StandInServer(account, rate_limits=True, clock_scale=scale) as server:
        budgets = RateBudgets(time_scale=scale)
        errors: list[BaseException] = []
        with KlaviyoClient(DEFAULT_API_KEY, base_url=server.base_url, budgets=budgets,
                           max_retries=4, timeout=10.0) as client:
            def work(k: int) -> None:
                try:
                    for j in range(5):
                        gid = lists[(k + j) % len(lists)]
                        client.get(f"/api/lists/{gid}", {"additional-fields[list]": "profile_count"})
                        client.get(f"/api/lists/{gid}")
                except BaseException as exc:  # reported below
                    errors.append(exc)

            threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert not errors
            assert client.stats.get("429", 0) == 0
        assert server.stats.get("429", 0) == 0
        assert server.stats["GET /api/lists/{id}"] == 60
        endpoint = budgets.get("/api/lists/{id}")
        counts = budgets.get("/api/lists/{id}" + PROFILE_COUNT_SUFFIX)
        assert endpoint.server_guided  # the headers steer the budget they describe
        assert not counts.server_guided  # and never the stricter stacked one
        assert counts.granted == 30
