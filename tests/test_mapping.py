"""Exact unit tests of the pure Klaviyo -> SmartPush mapping (docs/mapping.md)."""

from __future__ import annotations

import copy
import itertools
import random
from datetime import datetime, timezone

import pytest

from hookspecs.interfaces import Contact, NewContact
from smartpush_plugin_klaviyo.mapping import profile as mapping_profile
from smartpush_plugin_klaviyo.mapping import (
    MAX_PROPERTIES_BYTES,
    MAX_PROPERTY_BYTES,
    RESERVED_PROPERTY_KEYS,
    GroupInfo,
    MappedProfile,
    Skip,
    assign_tags,
    base_tag,
    country_to_region,
    is_valid_email,
    map_profile,
    merge_into,
    merge_status,
    new_contact,
    normalize_group_name,
    owned_fields_of,
)
from smartpush_plugin_klaviyo.models import parse_group

EMAIL = "Sarah.Mason@Klaviyo-Demo.com"
PHONE = "+15005550006"


def profile(**attrs) -> dict:
    base = {"email": EMAIL}
    base.update(attrs)
    return {"type": "profile", "id": "01PROFILE", "attributes": base, "links": {"self": "https://x/"}}


def sub_email(consent="SUBSCRIBED", **extra) -> dict:
    marketing = {"consent": consent, "can_receive_email_marketing": True}
    marketing.update(extra)
    return {"email": {"marketing": marketing}}


def sub_sms(consent="SUBSCRIBED", **extra) -> dict:
    marketing = {"consent": consent, "can_receive_sms_marketing": True}
    marketing.update(extra)
    return {"sms": {"marketing": marketing}}


def mapped(resource) -> MappedProfile:
    result = map_profile(resource)
    assert isinstance(result, MappedProfile), result
    return result


# ------------------------------------------------------------------ identity fields
def test_email_trimmed_case_kept_and_key_lowercased():
    m = mapped(profile(email="  Sarah.Mason@Klaviyo-Demo.com \t"))
    assert m.klaviyo_id == "01PROFILE"
    assert m.email == "Sarah.Mason@Klaviyo-Demo.com"
    assert m.email_key == "sarah.mason@klaviyo-demo.com"
    assert m.warnings == []
    assert "kla_email_raw" not in m.properties


def test_missing_id_and_malformed_resources():
    assert map_profile({"attributes": {"email": EMAIL}}) == Skip("", "missing_id")
    assert map_profile({"id": "", "attributes": {"email": EMAIL}}) == Skip("", "missing_id")
    assert map_profile({"id": "  ", "attributes": {"email": EMAIL}}) == Skip("  ", "missing_id")
    assert map_profile({"id": 12, "attributes": {"email": EMAIL}}) == Skip("", "missing_id")
    assert map_profile(None) == Skip("", "malformed: resource")  # type: ignore[arg-type]
    assert map_profile({"id": "X", "attributes": "nope"}) == Skip("X", "malformed: attributes")
    assert map_profile({"id": "X"}) == Skip("X", "no_email_or_phone")
    assert map_profile({"id": "X", "attributes": None}) == Skip("X", "no_email_or_phone")


def test_no_email_or_phone():
    assert map_profile(profile(email=None)) == Skip("01PROFILE", "no_email_or_phone")
    assert map_profile(profile(email="   ", phone_number="")) == Skip("01PROFILE", "no_email_or_phone")


def test_invalid_email_without_phone_is_skipped():
    assert map_profile(profile(email="not-an-email")) == Skip("01PROFILE", "invalid_email_no_phone")
    assert map_profile(profile(email="a@b.test", phone_number="garbage")) == Skip("01PROFILE", "invalid_email_no_phone")


def test_invalid_email_with_phone_imports_by_phone():
    m = mapped(profile(email=" bad@@example.com ", phone_number=PHONE))
    assert m.email is None and m.email_key is None
    assert m.phone == PHONE
    assert m.properties["kla_email_raw"] == " bad@@example.com "
    assert "invalid_email" in m.warnings


def test_malformed_email_type():
    assert map_profile(profile(email=42)) == Skip("01PROFILE", "malformed: email")
    m = mapped(profile(email=["x"], phone_number=PHONE))
    assert m.email is None and m.properties["kla_email_raw"] == ["x"]
    assert "malformed: email" in m.warnings


def test_invalid_phone_keeps_raw():
    m = mapped(profile(phone_number="call me maybe"))
    assert m.phone is None
    assert m.properties["kla_phone_number_raw"] == "call me maybe"
    assert "kla_phone_number" not in m.properties
    assert m.warnings == ["invalid_phone"]
    assert map_profile(profile(email=None, phone_number="123")) == Skip("01PROFILE", "invalid_phone_no_email")
    assert map_profile(profile(email=None, phone_number=5)) == Skip("01PROFILE", "malformed: phone_number")


def test_phone_e164_and_national_with_country_names():
    assert mapped(profile(phone_number=" +1 (500) 555-0006 ")).phone == PHONE
    assert mapped(profile(phone_number=PHONE)).properties["kla_phone_number"] == PHONE
    us = mapped(profile(phone_number="(415) 555-2671", location={"country": "United States"}))
    assert us.phone == "+14155552671"
    de = mapped(profile(phone_number="030 1234567", location={"country": "Deutschland"}))
    assert de.phone == "+49301234567"
    iso = mapped(profile(phone_number="030 1234567", location={"country": "de"}))
    assert iso.phone == "+49301234567"
    fr = mapped(profile(phone_number="01 23 45 67 89", location={"country": "France"}))
    assert fr.phone == "+33123456789"
    # no country: the locale's region is the fallback
    assert mapped(profile(phone_number="030 1234567", locale="de-DE")).phone == "+49301234567"
    # no region at all: a national number cannot be read
    none = mapped(profile(phone_number="030 1234567"))
    assert none.phone is None and "invalid_phone" in none.warnings


@pytest.mark.parametrize(
    "name,region",
    [
        ("United States", "US"), ("USA", "US"), ("US", "US"), ("us", "US"), ("United States of America", "US"),
        ("Deutschland", "DE"), ("Germany", "DE"), ("DE", "DE"), ("United Kingdom", "GB"), ("UK", "GB"),
        ("Österreich", "AT"), ("España", "ES"), ("The Netherlands", "NL"), ("Japan", "JP"),
        ("Côte d’Ivoire", "CI"), ("  france ", "FR"), ("Atlantis", None), ("", None), (None, None),
    ],
)
def test_country_to_region(name, region):
    assert country_to_region(name) == region


def test_name_rules():
    assert mapped(profile(first_name=" Sarah ", last_name=" Mason ")).name == "Sarah Mason"
    assert mapped(profile(first_name="Sarah")).name == "Sarah"
    assert mapped(profile(last_name="Mason", first_name="  ")).name == "Mason"
    assert mapped(profile(first_name="", last_name=None)).name is None
    assert mapped(profile()).name is None
    assert mapped(profile(first_name=3, last_name="Mason")).name == "Mason"


def test_country_field():
    assert mapped(profile(location={"country": " United States "})).country == "United States"
    assert mapped(profile(location={"country": "  "})).country is None
    assert mapped(profile(location=None)).country is None
    m = mapped(profile(location="Berlin"))
    assert m.country is None and "malformed: location" in m.warnings


def test_updated_parsing():
    m = mapped(profile(updated="2024-05-06T07:08:09.123456+02:00"))
    assert m.updated == datetime(2024, 5, 6, 5, 8, 9, 123456, tzinfo=timezone.utc)
    assert mapped(profile(updated="2024-05-06T07:08:09Z")).updated.tzinfo is not None
    assert mapped(profile(updated="2024-05-06T07:08:09")).updated == datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    bad = mapped(profile(updated="yesterday"))
    assert bad.updated is None and "malformed: updated" in bad.warnings
    assert bad.properties["kla_updated"] == "yesterday"


# ------------------------------------------------------------------ properties
def test_standard_attributes_become_kla_properties():
    m = mapped(
        profile(
            external_id="ext-1", organization="Org", title="Boss", locale="en-US", image="https://i/x.png",
            created="2022-11-08T00:00:00+00:00", updated="2022-11-09T00:00:00+00:00",
            last_event_date="2022-11-10T00:00:00+00:00", first_name="Sarah", last_name="Mason",
            phone_number=PHONE,
            location={
                "address1": "89 E 42nd St", "address2": "1st floor", "city": "New York", "country": "United States",
                "latitude": 40.7128, "longitude": "74.0060", "region": "NY", "zip": "10017",
                "timezone": "America/New_York", "ip": "127.0.0.1",
            },
        )
    )
    p = m.properties
    assert p["kla_external_id"] == "ext-1"
    assert p["kla_organization"] == "Org"
    assert p["kla_title"] == "Boss"
    assert p["kla_locale"] == "en-US"
    assert p["kla_image"] == "https://i/x.png"
    assert p["kla_created"] == "2022-11-08T00:00:00+00:00"
    assert p["kla_updated"] == "2022-11-09T00:00:00+00:00"
    assert p["kla_last_event_date"] == "2022-11-10T00:00:00+00:00"
    assert p["kla_first_name"] == "Sarah" and p["kla_last_name"] == "Mason"
    assert p["kla_phone_number"] == PHONE
    assert p["kla_location_address1"] == "89 E 42nd St"
    assert p["kla_location_address2"] == "1st floor"
    assert p["kla_location_city"] == "New York"
    assert p["kla_location_country"] == "United States"
    assert p["kla_location_latitude"] == 40.7128
    assert p["kla_location_longitude"] == "74.0060"
    assert p["kla_location_region"] == "NY"
    assert p["kla_location_zip"] == "10017"
    assert p["kla_location_timezone"] == "America/New_York"
    assert p["kla_location_ip"] == "127.0.0.1"
    assert "kla_email" not in p


def test_none_attributes_are_not_stored():
    m = mapped(profile(title=None, organization=None, location={"city": None, "zip": "1"}))
    assert "kla_title" not in m.properties and "kla_organization" not in m.properties
    assert "kla_location_city" not in m.properties and m.properties["kla_location_zip"] == "1"


def test_custom_properties_prefixed_with_structure_and_nulls_kept():
    custom = {
        "$source": "form", "favourite color": "blue", "a.b": 1, "größe": "L", "🎉": True,
        "nested": {"x": [1, {"y": None}]}, "list": [1, "a"], "nothing": None,
    }
    m = mapped(profile(properties=custom))
    p = m.properties
    assert p["kla_$source"] == "form"
    assert p["kla_favourite color"] == "blue"
    assert p["kla_a.b"] == 1
    assert p["kla_größe"] == "L"
    assert p["kla_🎉"] is True
    assert p["kla_nested"] == {"x": [1, {"y": None}]}
    assert p["kla_list"] == [1, "a"]
    assert "kla_nothing" in p and p["kla_nothing"] is None
    assert m.warnings == []


def test_custom_property_colliding_with_standard_attribute():
    m = mapped(profile(locale="en-US", properties={"locale": "de", "prop_locale": "x", "title": "t"}))
    p = m.properties
    assert p["kla_locale"] == "en-US"  # the standard attribute keeps its key
    assert p["kla_prop_locale"] == "x"  # an existing custom property keeps its key
    assert p["kla_prop_locale_2"] == "de"  # the colliding one moves, suffix when taken
    assert p["kla_prop_title"] == "t"  # reserved even when the attribute is absent (stable)
    assert "kla_title" not in p
    assert sorted(w for w in m.warnings if w.startswith("property_collision")) == [
        "property_collision:locale",
        "property_collision:title",
    ]


def test_custom_property_colliding_with_consent_and_location_keys():
    m = mapped(profile(properties={"email_consent": "yes", "location_city": "x", "phone_number": "p"}))
    assert m.properties["kla_prop_email_consent"] == "yes"
    assert m.properties["kla_prop_location_city"] == "x"
    assert m.properties["kla_prop_phone_number"] == "p"
    assert "kla_email_consent" not in m.properties


def test_unknown_extra_attributes():
    m = mapped(profile(birthday="2000-01-01", properties={"birthday": "custom"}, location={"planet": "Mars"},
                       predictive_analytics={"historic_clv": 9.5}))
    p = m.properties
    assert p["kla_birthday"] == "custom"  # custom properties win against unknown attributes
    assert p["kla_attr_birthday"] == "2000-01-01"
    assert p["kla_location_planet"] == "Mars"
    assert p["kla_predictive_analytics"] == {"historic_clv": 9.5}
    assert "attribute_collision:birthday" in m.warnings


def test_unknown_attribute_with_reserved_name_never_overwrites():
    m = mapped(profile(email_consent="odd", subscriptions=sub_email()))
    assert m.properties["kla_email_consent"] == "SUBSCRIBED"
    assert m.properties["kla_attr_email_consent"] == "odd"


def test_malformed_properties_warns():
    m = mapped(profile(properties=["a"]))
    assert "malformed: properties" in m.warnings


def test_all_property_keys_prefixed():
    m = mapped(profile(phone_number=PHONE, properties={"": 1, "kla_x": 2}, subscriptions=sub_email() | sub_sms()))
    assert all(k.startswith("kla_") for k in m.properties)
    assert m.properties["kla_"] == 1 and m.properties["kla_kla_x"] == 2


def test_property_size_limits():
    big = "x" * (MAX_PROPERTY_BYTES - 2)  # JSON adds the quotes: exactly the limit
    assert isinstance(map_profile(profile(properties={"a": big})), MappedProfile)
    assert map_profile(profile(properties={"a": big + "x"})) == Skip("01PROFILE", "property_too_large")
    assert map_profile(profile(properties={"a": {"b": big}})) == Skip("01PROFILE", "property_too_large")
    # ensure_ascii=False UTF-8 bytes: 'é' is 2 bytes
    assert map_profile(profile(properties={"a": "é" * (MAX_PROPERTY_BYTES // 2)})) == Skip(
        "01PROFILE", "property_too_large"
    )
    chunk = "y" * (60 * 1024)
    many = {f"p{i}": chunk for i in range(MAX_PROPERTIES_BYTES // len(chunk) + 1)}
    assert map_profile(profile(properties=many)) == Skip("01PROFILE", "property_too_large")
    few = {f"p{i}": chunk for i in range(MAX_PROPERTIES_BYTES // len(chunk) - 1)}
    assert isinstance(map_profile(profile(properties=few)), MappedProfile)


# ------------------------------------------------------------------ consent and status
@pytest.mark.parametrize(
    "marketing,status",
    [
        ({"consent": "SUBSCRIBED", "can_receive_email_marketing": True}, "subscribed"),
        ({"consent": "SUBSCRIBED", "can_receive_email_marketing": True, "suppression": []}, "subscribed"),
        ({"consent": "SUBSCRIBED"}, "subscribed"),
        ({"consent": "SUBSCRIBED", "can_receive_email_marketing": False}, "unsubscribed"),
        (
            {"consent": "SUBSCRIBED", "can_receive_email_marketing": True,
             "suppression": [{"reason": "HARD_BOUNCE", "timestamp": "2023-02-21T20:07:38+00:00"}]},
            "unsubscribed",
        ),
        (
            {"consent": "SUBSCRIBED", "can_receive_email_marketing": True,
             "list_suppressions": [{"list_id": "L1", "reason": "USER_SUPPRESSED", "timestamp": "2023-01-01T00:00:00+00:00"}]},
            "subscribed",  # a list suppression is not global
        ),
        ({"consent": "UNSUBSCRIBED", "can_receive_email_marketing": False}, "unsubscribed"),
        ({"consent": "NEVER_SUBSCRIBED", "can_receive_email_marketing": True}, "never_subscribed"),
        ({"consent": "subscribed"}, "subscribed"),
    ],
)
def test_email_status(marketing, status):
    assert mapped(profile(subscriptions={"email": {"marketing": marketing}})).email_status == status


@pytest.mark.parametrize("consent", ["MAYBE", "", None, 3])
def test_unknown_email_consent(consent):
    m = mapped(profile(subscriptions={"email": {"marketing": {"consent": consent, "can_receive_email_marketing": True}}}))
    assert m.email_status is None
    assert "unknown_email_consent" in m.warnings


def test_missing_subscriptions_is_unknown():
    for subs in (None, {}, {"email": None}, {"email": {"marketing": None}}):
        m = mapped(profile(subscriptions=subs, phone_number=PHONE))
        assert m.email_status is None and m.sms_status is None
        assert m.warnings == []
    m = mapped(profile(subscriptions="yes"))
    assert "malformed: subscriptions" in m.warnings


@pytest.mark.parametrize(
    "marketing,status",
    [
        ({"consent": "SUBSCRIBED", "can_receive_sms_marketing": True}, "subscribed"),
        ({"consent": "SUBSCRIBED"}, "subscribed"),
        ({"consent": "SUBSCRIBED", "can_receive_sms_marketing": False}, "unsubscribed"),
        ({"consent": "UNSUBSCRIBED", "can_receive_sms_marketing": False}, "unsubscribed"),
        ({"consent": "NEVER_SUBSCRIBED", "can_receive_sms_marketing": False}, "never_subscribed"),
        ({"consent": "WHAT"}, None),
    ],
)
def test_sms_status(marketing, status):
    m = mapped(profile(phone_number=PHONE, subscriptions={"sms": {"marketing": marketing}}))
    assert m.sms_status == status
    assert ("unknown_sms_consent" in m.warnings) == (status is None)


def test_status_needs_the_address():
    # SMS consent without a usable phone, email consent without a usable email: no status
    m = mapped(profile(subscriptions=sub_sms(), phone_number="nope"))
    assert m.sms_status is None
    m = mapped(profile(email="bad", phone_number=PHONE, subscriptions=sub_email()))
    assert m.email_status is None


def test_consent_evidence_properties():
    supp = [{"reason": "HARD_BOUNCE", "timestamp": "2023-02-21T20:07:38+00:00"}]
    lsupp = [{"list_id": "Y6nRLr", "reason": "USER_SUPPRESSED", "timestamp": "2023-02-21T20:07:38+00:00"}]
    subs = {
        "email": {
            "marketing": {
                "can_receive_email_marketing": False, "consent": "SUBSCRIBED",
                "consent_timestamp": "2023-02-21T20:07:38+00:00", "last_updated": "2023-02-22T00:00:00+00:00",
                "method": "PREFERENCE_PAGE", "method_detail": "mydomain.com/signup",
                "custom_method_detail": "drive", "double_optin": True, "suppression": supp, "list_suppressions": lsupp,
            },
            "open_tracking": {"consent": "SUBSCRIBED", "can_receive": True},
        },
        "sms": {
            "marketing": {
                "can_receive_sms_marketing": True, "consent": "SUBSCRIBED",
                "consent_timestamp": "2023-03-01T00:00:00+00:00", "method": "TEXT", "method_detail": "JOIN",
                "last_updated": "2023-03-02T00:00:00+00:00",
            },
            "transactional": {
                "can_receive_sms_transactional": True, "consent": "SUBSCRIBED",
                "consent_timestamp": "2023-03-03T00:00:00+00:00", "method": "TEXT", "method_detail": "",
                "last_updated": None,
            },
        },
        "mobile_push": {"marketing": {"consent": "SUBSCRIBED"}},
    }
    m = mapped(profile(phone_number=PHONE, subscriptions=subs))
    p = m.properties
    assert m.email_status == "unsubscribed" and m.sms_status == "subscribed"
    assert p["kla_email_consent"] == "SUBSCRIBED"
    assert p["kla_email_consent_timestamp"] == "2023-02-21T20:07:38+00:00"
    assert p["kla_email_consent_method"] == "PREFERENCE_PAGE"
    assert p["kla_email_consent_method_detail"] == "mydomain.com/signup"
    assert p["kla_email_consent_custom_method_detail"] == "drive"
    assert p["kla_email_consent_last_updated"] == "2023-02-22T00:00:00+00:00"
    assert p["kla_email_double_optin"] is True
    assert p["kla_email_can_receive_marketing"] is False
    assert p["kla_email_suppressions"] == supp
    assert p["kla_email_list_suppressions"] == lsupp
    assert p["kla_email_open_tracking"] == {"consent": "SUBSCRIBED", "can_receive": True}
    assert p["kla_sms_consent"] == "SUBSCRIBED"
    assert p["kla_sms_consent_timestamp"] == "2023-03-01T00:00:00+00:00"
    assert p["kla_sms_consent_method"] == "TEXT"
    assert p["kla_sms_consent_method_detail"] == "JOIN"
    assert p["kla_sms_consent_last_updated"] == "2023-03-02T00:00:00+00:00"
    assert p["kla_sms_can_receive_marketing"] is True
    assert p["kla_sms_transactional_consent"] == "SUBSCRIBED"
    assert p["kla_sms_transactional_consent_timestamp"] == "2023-03-03T00:00:00+00:00"
    assert p["kla_sms_transactional_consent_method"] == "TEXT"
    assert p["kla_sms_transactional_consent_method_detail"] == ""
    assert "kla_sms_transactional_consent_last_updated" not in p  # absent/None: omitted
    assert p["kla_sms_can_receive_transactional"] is True
    assert p["kla_subscriptions_mobile_push"] == {"marketing": {"consent": "SUBSCRIBED"}}


def test_absent_consent_evidence_is_omitted():
    m = mapped(profile(subscriptions={"email": {"marketing": {"consent": "NEVER_SUBSCRIBED"}}}))
    assert {k for k in m.properties if k.startswith(("kla_email", "kla_sms"))} == {"kla_email_consent"}


# ------------------------------------------------------------------ merge_status
@pytest.mark.parametrize(
    "existing,incoming,expected",
    [
        ("subscribed", "subscribed", "subscribed"),
        ("subscribed", "unsubscribed", "subscribed"),
        ("subscribed", "never_subscribed", "subscribed"),
        ("unsubscribed", "subscribed", "subscribed"),
        ("unsubscribed", "unsubscribed", "unsubscribed"),
        ("unsubscribed", "never_subscribed", "unsubscribed"),
        ("never_subscribed", "subscribed", "subscribed"),
        ("never_subscribed", "unsubscribed", "never_subscribed"),
        ("never_subscribed", "never_subscribed", "never_subscribed"),
        (None, "subscribed", "subscribed"),
        (None, "unsubscribed", "unsubscribed"),
        (None, "never_subscribed", "never_subscribed"),
        ("subscribed", None, "subscribed"),
        ("unsubscribed", None, "unsubscribed"),
        ("never_subscribed", None, "never_subscribed"),
        (None, None, None),
    ],
)
def test_merge_status(existing, incoming, expected):
    assert merge_status(existing, incoming) == expected


# ------------------------------------------------------------------ tags
@pytest.mark.parametrize(
    "name,expected",
    [
        ("Repeat Purchasers", "repeat_purchasers"),
        ("  Repeat   Purchasers  ", "repeat_purchasers"),
        ("Repeat Purchasers ", "repeat_purchasers"),
        ("VIP", "vip"),
        ("Café Crème", "café_crème"),
        ("Cafe\u0301", "café"),  # NFC: the same tag whatever the accent encoding
        ("🎉 Party\tPeople\n", "🎉_party_people"),
        ("Black-Friday 2024!", "black-friday_2024!"),
        ("ÉTÉ", "été"),
        ("", ""),
        ("   ", ""),
        (None, ""),
    ],
)
def test_normalize_group_name(name, expected):
    assert normalize_group_name(name) == expected


def test_base_tag():
    assert base_tag("segment", "Repeat Purchasers", "S1") == "kla_segment_repeat_purchasers"
    assert base_tag("list", "Newsletter", "Y6nRLr") == "kla_list_newsletter"
    assert base_tag("list", None, "Y6nRLr") == "kla_list_y6nrlr"
    assert base_tag("list", "  ", "Y6nRLr") == "kla_list_y6nrlr"


def _dt(day):
    return datetime(2024, 1, day, tzinfo=timezone.utc)


def test_assign_tags_vip_collision_stable_under_reordering():
    groups = [
        GroupInfo("SegB", "segment", "VIP", _dt(2)),
        GroupInfo("SegA", "segment", "vip", _dt(3)),
        GroupInfo("SegC", "segment", " Vip ", _dt(2)),
        GroupInfo("ListA", "list", "VIP", _dt(9)),
        GroupInfo("S2", "segment", "Repeat Purchasers", None),
    ]
    expected = {
        "SegB": "kla_segment_vip",  # created first; tie with SegC broken by the smaller id
        "SegC": "kla_segment_vip_segc",
        "SegA": "kla_segment_vip_sega",
        "ListA": "kla_list_vip",  # other kind: no collision
        "S2": "kla_segment_repeat_purchasers",
    }
    first_collisions = None
    for perm in itertools.permutations(groups):
        tags, collisions = assign_tags(perm)
        assert tags == expected
        if first_collisions is None:
            first_collisions = collisions
        assert collisions == first_collisions
    assert len(first_collisions) == 1
    c = first_collisions[0]
    assert c.winner == "SegB" and c.base_tag == "kla_segment_vip"
    assert c.tags == (("SegB", "kla_segment_vip"), ("SegC", "kla_segment_vip_segc"), ("SegA", "kla_segment_vip_sega"))
    assert "kla_segment_vip" in str(c) and "SegA" in str(c)


def test_assign_tags_unknown_created_loses_and_tags_unique():
    groups = [
        GroupInfo("a1", "list", "News", None),
        GroupInfo("b2", "list", "news", _dt(5)),
        GroupInfo("x", "list", "news a1", _dt(1)),  # its base tag equals a1's suffixed tag
        GroupInfo("n1", "list", None, None),
        GroupInfo("N1", "list", "", None),
    ]
    for _ in range(20):
        random.shuffle(groups)
        tags, _collisions = assign_tags(groups)
        assert tags["b2"] == "kla_list_news"
        assert tags["x"] == "kla_list_news_a1"
        assert tags["a1"] == "kla_list_news_a1_2"
        assert tags["N1"] == "kla_list_n1"  # 'N1' < 'n1'
        assert tags["n1"] == "kla_list_n1_n1"
        assert len(set(tags.values())) == len(tags)


def test_assign_tags_no_collision_is_empty():
    tags, collisions = assign_tags([GroupInfo("L", "list", "A", None), GroupInfo("S", "segment", "A", None)])
    assert tags == {"L": "kla_list_a", "S": "kla_segment_a"} and collisions == []


def test_parse_group():
    g = parse_group(
        {"type": "list", "id": "Y6nRLr", "attributes": {"name": "Newsletter", "created": "2022-11-08T00:00:00+00:00",
                                                         "updated": "bad", "opt_in_process": "double_opt_in"}},
        "list",
    )
    assert g.id == "Y6nRLr" and g.kind == "list" and g.name == "Newsletter" and g.is_active is True
    assert g.created == datetime(2022, 11, 8, tzinfo=timezone.utc) and g.updated is None
    s = parse_group({"id": "S", "attributes": {"name": None, "is_active": False}}, "segment")
    assert s.is_active is False and s.name is None
    assert parse_group({"id": "S", "attributes": {"is_active": "no"}}, "segment").is_active is True
    assert parse_group({"attributes": {}}, "list") is None
    assert parse_group({"id": ""}, "list") is None
    assert parse_group("x", "list") is None
    assert parse_group({"id": "S", "attributes": None}, "segment").name is None


# ------------------------------------------------------------------ repr
def test_repr_has_no_pii():
    m = mapped(profile(phone_number=PHONE, first_name="Sarah", last_name="Mason",
                       location={"country": "United States", "city": "New York"},
                       properties={"secret": "Dr. Octopus"}))
    for text in (repr(m), str(m), repr(new_contact(m))):
        for pii in ("Sarah", "Mason", "klaviyo-demo", "5550006", "Octopus", "New York"):
            assert pii.lower() not in text.lower(), text
    assert "01PROFILE" in repr(m)


# ------------------------------------------------------------------ contacts
def test_new_contact():
    m = mapped(profile(phone_number=PHONE, first_name="Sarah", location={"country": "US"},
                       subscriptions=sub_email("UNSUBSCRIBED") | sub_sms()))
    c = new_contact(m)
    assert isinstance(c, NewContact)
    assert (c.email, c.phone, c.name, c.country) == (EMAIL, PHONE, "Sarah", "US")
    assert c.email_subscription == "unsubscribed" and c.sms_subscription == "subscribed"
    assert c.properties == m.properties and c.properties is not m.properties
    assert owned_fields_of(c) == {"email", "phone", "name", "country"}
    assert owned_fields_of(new_contact(mapped(profile()))) == {"email"}


def contact(**kw) -> Contact:
    return Contact(uid="u1", **kw)


def test_merge_fills_empty_fields_and_owns_them():
    m = mapped(profile(phone_number=PHONE, first_name="Sarah", location={"country": "US"}))
    existing = contact(email=EMAIL.lower(), properties={"own": 1})
    merged, owned, notes = merge_into(existing, m, owned_fields=set(), primary=True)
    assert merged is not existing and existing.phone is None and existing.properties == {"own": 1}
    assert merged.email == EMAIL.lower()  # same address, not owned: the merchant's spelling stays
    assert (merged.phone, merged.name, merged.country) == (PHONE, "Sarah", "US")
    assert owned == {"phone", "name", "country"}
    assert "filled:phone" in notes
    assert merged.properties["own"] == 1 and merged.properties["kla_phone_number"] == PHONE


def test_merge_never_overwrites_foreign_values_but_updates_owned_ones():
    m = mapped(profile(phone_number=PHONE, first_name="New", location={"country": "DE"}))
    existing = contact(email="other@example.com", phone="+14155552671", name="Old", country="US")
    merged, owned, notes = merge_into(existing, m, owned_fields={"name"}, primary=True)
    assert merged.email == "other@example.com" and merged.phone == "+14155552671" and merged.country == "US"
    assert merged.name == "New"
    assert owned == {"name"}
    assert {"kept_existing:email", "kept_existing:phone", "kept_existing:country", "updated:name"} <= set(notes)
    for note in notes:
        assert "@" not in note and "+1" not in note


def test_merge_owned_email_case_change_updates():
    m = mapped(profile(email="Sarah@Example.com"))
    merged, owned, _ = merge_into(contact(email="sarah@example.com"), m, owned_fields={"email"}, primary=True)
    assert merged.email == "Sarah@Example.com" and owned == {"email"}


def test_merge_empty_incoming_never_clears():
    m = mapped(profile())
    merged, owned, _ = merge_into(contact(email=EMAIL, name="Keep", country="FR"), m, owned_fields={"name", "country"},
                                  primary=True)
    assert merged.name == "Keep" and merged.country == "FR" and owned == {"name", "country"}


def test_merge_properties_primary_overwrites_kla_secondary_only_adds():
    m = mapped(profile(title="New", properties={"x": 1}))
    existing = contact(email=EMAIL, properties={"kla_title": "Old", "kla_gone": 1, "plain": "p"})
    merged, _, _ = merge_into(existing, m, owned_fields=set(), primary=True)
    assert merged.properties["kla_title"] == "New" and merged.properties["kla_x"] == 1
    assert merged.properties["kla_gone"] == 1 and merged.properties["plain"] == "p"
    merged2, _, _ = merge_into(existing, m, owned_fields=set(), primary=False)
    assert merged2.properties["kla_title"] == "Old" and merged2.properties["kla_x"] == 1
    assert merged2.properties["plain"] == "p"


def test_merge_statuses_use_merge_status():
    for existing_status, consent, expected in [
        (None, "UNSUBSCRIBED", "unsubscribed"),
        ("subscribed", "UNSUBSCRIBED", "subscribed"),
        ("unsubscribed", "SUBSCRIBED", "subscribed"),
        ("never_subscribed", "NEVER_SUBSCRIBED", "never_subscribed"),
    ]:
        m = mapped(profile(phone_number=PHONE, subscriptions=sub_email(consent) | sub_sms(consent)))
        ex = contact(email=EMAIL, phone=PHONE, email_subscription=existing_status, sms_subscription=existing_status)
        merged, _, _ = merge_into(ex, m, owned_fields=set(), primary=True)
        assert merged.email_subscription == expected
        assert merged.sms_subscription == expected


def test_merge_status_not_applied_to_another_address():
    m = mapped(profile(phone_number=PHONE, subscriptions=sub_email() | sub_sms()))
    ex = contact(email="merchant@example.com", phone="+14155552671")
    merged, _, notes = merge_into(ex, m, owned_fields=set(), primary=True)
    assert merged.email_subscription is None and merged.sms_subscription is None
    assert "email_status_not_applied:address_differs" in notes


def test_merge_unchanged_klaviyo_consent_does_not_revert_smartpush_change():
    m = mapped(profile(subscriptions=sub_email("SUBSCRIBED", consent_timestamp="2024-01-01T00:00:00+00:00")))
    first, owned, _ = merge_into(contact(email=EMAIL), m, owned_fields=set(), primary=True)
    assert first.email_subscription == "subscribed"
    unsubscribed_in_smartpush = copy.deepcopy(first)
    unsubscribed_in_smartpush.email_subscription = "unsubscribed"
    again, _, _ = merge_into(unsubscribed_in_smartpush, m, owned_fields=owned, primary=True)
    assert again.email_subscription == "unsubscribed"
    # Klaviyo consent changes later (a new subscription): it applies again
    m2 = mapped(profile(subscriptions=sub_email("SUBSCRIBED", consent_timestamp="2024-06-01T00:00:00+00:00")))
    later, _, _ = merge_into(unsubscribed_in_smartpush, m2, owned_fields=owned, primary=True)
    assert later.email_subscription == "subscribed"


def test_merge_later_klaviyo_unsubscribe_follows_a_status_klaviyo_gave():
    """A status SmartPush got from Klaviyo (nobody changed it since) follows Klaviyo's later
    unsubscribe or suppression (issue #12: a new suppression is reflected in the status)."""
    m = mapped(profile(subscriptions=sub_email("SUBSCRIBED")))
    first, owned, _ = merge_into(contact(email=EMAIL), m, owned_fields=set(), primary=True)
    assert first.email_subscription == "subscribed"
    m2 = mapped(profile(subscriptions=sub_email("UNSUBSCRIBED", can_receive_email_marketing=False)))
    later, _, _ = merge_into(first, m2, owned_fields=owned, primary=True)
    assert later.email_subscription == "unsubscribed"
    assert later.properties["kla_email_consent"] == "UNSUBSCRIBED"
    bounced = mapped(profile(subscriptions=sub_email("SUBSCRIBED", can_receive_email_marketing=False,
                                                     suppression=[{"reason": "HARD_BOUNCE", "timestamp": "2026-01-01T00:00:00+00:00"}])))
    again, _, _ = merge_into(first, bounced, owned_fields=owned, primary=True)
    assert again.email_subscription == "unsubscribed"


def test_merge_later_klaviyo_unsubscribe_never_overwrites_a_smartpush_status():
    """The product rule: a status SmartPush held before Klaviyo's (here subscribed, while
    Klaviyo said NEVER_SUBSCRIBED) is never overwritten by UNSUBSCRIBED/NEVER_SUBSCRIBED."""
    m = mapped(profile(subscriptions=sub_email("NEVER_SUBSCRIBED")))
    first, owned, _ = merge_into(contact(email=EMAIL, email_subscription="subscribed"), m, owned_fields=set(), primary=True)
    assert first.email_subscription == "subscribed"
    m2 = mapped(profile(subscriptions=sub_email("UNSUBSCRIBED", can_receive_email_marketing=False)))
    later, _, _ = merge_into(first, m2, owned_fields=owned, primary=True)
    assert later.email_subscription == "subscribed"
    assert later.properties["kla_email_consent"] == "UNSUBSCRIBED"


def test_merge_into_does_not_mutate_inputs():
    m = mapped(profile(phone_number=PHONE, properties={"a": 1}))
    before = copy.deepcopy(m.properties)
    existing = contact(email=EMAIL, properties={"kla_a": 0})
    merge_into(existing, m, owned_fields=set(), primary=True)
    assert existing.properties == {"kla_a": 0} and m.properties == before


# ------------------------------------------------------------------ misc
def test_never_raises_on_garbage():
    for attrs in (
        {"email": EMAIL, "location": []}, {"email": EMAIL, "subscriptions": {"email": "x", "sms": 3}},
        {"email": EMAIL, "subscriptions": {"email": {"marketing": []}, "sms": {"marketing": "x", "transactional": 1}}},
        {"email": EMAIL, "first_name": {"a": 1}}, {"email": "\x00@\x00"}, {"email": "a" * 10000 + "@x.com"},
        {"phone_number": "+" + "9" * 100}, {"phone_number": "\u0663\u0664"},
    ):
        result = map_profile({"id": "G", "attributes": attrs})
        assert isinstance(result, (MappedProfile, Skip)) and result.klaviyo_id == "G"


def test_unexpected_exception_becomes_skip(monkeypatch):
    def boom(*a, **k):
        raise ZeroDivisionError("secret@example.com")

    monkeypatch.setattr(mapping_profile, "_too_large", boom)
    assert map_profile(profile()) == Skip("01PROFILE", "unexpected: ZeroDivisionError")


@pytest.mark.parametrize(
    "email",
    ["a@b.co", "first.last+tag@sub.example.co.uk", "x@xn--bcher-kva.com", "O'Neil@example.com", "ü@bü.de",
     "a@b.c1m", "1@2.3.com", ("a" * 65) + "@b.com"],  # email-validator is not strict on length
)
def test_valid_emails(email):
    assert is_valid_email(email)


@pytest.mark.parametrize(
    "email",
    ["plain", "a@b", "a@b.test", "a@host.localhost", "a@b.local", "a..b@c.com", ".a@c.com", "a@-b.com",
     "a@b.c1", "a@ab--c.com", "a b@c.com", "a@b.com.", "@b.com", "a@"],
)
def test_invalid_emails(email):
    assert not is_valid_email(email)


def test_reserved_keys_are_prefixed():
    assert all(k.startswith("kla_") for k in RESERVED_PROPERTY_KEYS)
