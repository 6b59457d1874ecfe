"""Consent as the spec shapes it, over HTTP, against ``tests/_spec_server.py``.

``subscriptions`` of GET /api/profiles (``additional-fields[profile]=subscriptions``) is
components.schemas.Subscriptions: ``email.marketing`` is components.schemas.EmailMarketing,
whose ``consent`` is a free ``string`` (no enum; only the write parameters enumerate
``SUBSCRIBED``/``UNSUBSCRIBED``), ``can_receive_email_marketing`` a required boolean ("True
if [the] profile does not have any global suppressions") and ``suppression`` an optional,
nullable array. Segment conditions spell the same states in lower case
(components.schemas.HasEmailMarketingSubscribed.properties.subscription: ``subscribed``).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from smartpush_plugin_klaviyo.mapping import map_profile
from tests._spec_server import SpecServer
from tests.test_spec_robustness import T0, profile


RECEIVABLE = {"can_receive_email_marketing": True, "consent": "SUBSCRIBED"}
BARRED = {"can_receive_email_marketing": False, "consent": "SUBSCRIBED"}  # no ``suppression``: it is optional


def _email(marketing: dict) -> dict:
    return {"email": {"marketing": marketing}}


def by_id(h) -> dict[str, dict]:
    return {kid: c for c in h.export() for kid in c["klaviyo_ids"]}


def test_a_second_profile_does_not_make_an_address_barred_by_can_receive_false_subscribed(make_harness):
    """components.schemas.EmailMarketing: ``suppression`` is optional and nullable, so a
    globally suppressed profile may say so only through ``can_receive_email_marketing:
    false``. A second profile of the same address (emails differ in case only) that says
    SUBSCRIBED must not make the address subscribed in SmartPush."""
    first = profile(1, T0, email="Dup@Example.com", subscriptions=_email(BARRED))
    second = profile(2, T0 + timedelta(minutes=5), email="dup@example.com", subscriptions=_email(RECEIVABLE))
    with SpecServer([first]) as server:
        h = make_harness(server)
        assert h.sync("full").outcome == "completed"
        assert by_id(h)[first["id"]]["email_subscription"] == "unsubscribed"
        with server.lock:
            server.profiles.append(second)
        report = h.sync("full")
        assert report.outcome == "completed", report.message
        contacts = h.export()
        assert len(contacts) == 1 and sorted(contacts[0]["klaviyo_ids"]) == [first["id"], second["id"]]
        assert contacts[0]["email_subscription"] == "unsubscribed"


@pytest.mark.parametrize(
    "consent, expected",
    [
        ("SUBSCRIBED", "subscribed"),
        ("subscribed", "subscribed"),  # the spelling of segment conditions
        (" Subscribed ", "subscribed"),
        ("UNSUBSCRIBED", "unsubscribed"),
        ("unsubscribed", "unsubscribed"),
        ("NEVER_SUBSCRIBED", "never_subscribed"),
        ("never_subscribed", "never_subscribed"),
        # anything else is unknown, never subscribed
        ("PENDING", None),
        ("SUBSCRIBED_PENDING", None),
        ("DOUBLE_OPT_IN_PENDING", None),
        ("TRANSACTIONAL", None),
        ("", None),
        (True, None),
    ],
)
def test_consent_strings_case_insensitive_and_unknown_never_subscribed(consent, expected):
    """``consent`` is an un-enumerated ``string`` (components.schemas.EmailMarketing
    .properties.consent, SMSMarketing.properties.consent): every value other than the
    three known states must map to no status, on both channels."""
    resource = profile(1, T0, phone_number="+14155550100", subscriptions={
        "email": {"marketing": {"can_receive_email_marketing": True, "consent": consent}},
        "sms": {"marketing": {"can_receive_sms_marketing": True, "consent": consent}},
    })
    m = map_profile(resource)
    assert m.email_status == expected and m.sms_status == expected


@pytest.mark.parametrize(
    "marketing",
    [
        BARRED,
        {**RECEIVABLE, "suppression": [{"reason": "HARD_BOUNCE", "timestamp": "2026-01-01T00:00:00+00:00"}]},
        {**RECEIVABLE, "suppression": [{"reason": "USER_SUPPRESSED", "timestamp": "2026-01-01T00:00:00+00:00"}]},
        {"can_receive_email_marketing": False, "consent": "subscribed", "suppression": None},
    ],
)
def test_a_suppressed_subscribed_profile_is_never_subscribed(marketing):
    """components.schemas.EmailMarketingSuppression.properties.reason enumerates
    HARD_BOUNCE, INVALID_EMAIL, SPAM_COMPLAINT, UNSUBSCRIBE, USER_SUPPRESSED: any global
    suppression, or ``can_receive_email_marketing: false``, makes SUBSCRIBED count as
    unsubscribed."""
    assert map_profile(profile(1, T0, subscriptions=_email(marketing))).email_status == "unsubscribed"


def test_list_suppressions_alone_do_not_unsubscribe():
    """``list_suppressions`` (components.schemas.EmailMarketingListSuppression) bar one
    list only, not the address."""
    marketing = {**RECEIVABLE, "list_suppressions": [
        {"list_id": "Y6nRLr", "reason": "USER_SUPPRESSED", "timestamp": "2026-01-01T00:00:00+00:00"}]}
    m = map_profile(profile(1, T0, subscriptions=_email(marketing)))
    assert m.email_status == "subscribed"
    assert m.properties["kla_email_list_suppressions"][0]["list_id"] == "Y6nRLr"
