"""An incremental run with 1% of the profiles changed costs about 1% of a full run's profile requests."""

from __future__ import annotations

import math

import pytest
from klaviyo_standin import ALL_SCOPES, DEFAULT_API_KEY, StandInServer, generate_account

from tests.harness import Harness, make_host

pytestmark = pytest.mark.slow


def test_one_percent_changed_costs_about_one_percent(db_url, tmp_path):
    account = generate_account(profiles=20_000, seed=17)
    with StandInServer(account, api_keys={DEFAULT_API_KEY: ALL_SCOPES}, rate_limits=False) as server:
        host = make_host(db_url, tmp_path, server, KLAVIYO_RATE_LIMITS="off")
        h = Harness(host=host, server=server, account=account)
        h.install_and_authorize(DEFAULT_API_KEY)
        full = h.sync("full")
        assert full.outcome == "completed"
        ids = account.profile_ids()
        changed = ids[:: len(ids) // 200][:200]  # 1%, spread over the account
        for pid in changed:
            account.update_profile(pid, {"title": "Changed today"})
        inc = h.sync("incremental")
        host.close()
    assert inc.outcome == "completed", inc.message
    full_pages = full.requests["GET /api/profiles"]
    inc_pages = inc.requests["GET /api/profiles"]
    print(f"profile requests: full {full_pages}, incremental {inc_pages} "
          f"({inc_pages / full_pages:.1%}); profiles seen {inc.counts['profiles_seen']}")
    print("incremental requests:", inc.requests)
    assert inc.counts["profiles_seen"] - inc.counts["profiles_swept"] >= 200
    # the changed pages, the probe, a page per suppression filter, and the rolling sweep's
    # share of the account (1/7 of the full run's pages: deletions and quiet consent changes)
    assert inc_pages <= 0.01 * full_pages + 4 + math.ceil(full_pages / 7) + 1
    # Memberships: small groups are rescanned (a page or two each), the large ones' turn
    # (about 1/7 of their pages) too; the other large groups cost a joins page each.
    member_requests = sum(v for k, v in inc.requests.items() if "relationships" in k)
    full_member_requests = sum(v for k, v in full.requests.items() if "relationships" in k)
    assert member_requests <= 0.3 * full_member_requests
