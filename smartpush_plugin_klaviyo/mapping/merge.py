"""Merge and consent rules: how a mapped profile meets the SmartPush contact it matches,
and the one conversion between :class:`Contact` and :class:`NewContact`.

Pure functions (no I/O). The rules are tables in ``docs/mapping.md``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any


from hookspecs.interfaces import Contact, NewContact, normalize_email_key
from hookspecs.types import SubscriptionStatus
from smartpush_plugin_klaviyo.mapping.profile import (
    _EMAIL_MARKETING,
    _SMS_MARKETING,
    _email_status,
    _sms_status,
    EMAIL_EVIDENCE_KEYS,
    SMS_EVIDENCE_KEYS,
    STANDARD_FIELDS,
    SUBSCRIBED,
    MappedProfile,
    merge_status,
)

# --------------------------------------------------------------------------- contacts
def owned_fields_of(contact: NewContact | Contact) -> set[str]:
    """The standard fields a contact created by the plugin owns: every non-empty one."""
    return {f for f in STANDARD_FIELDS if getattr(contact, f)}


def new_contact(mapped: MappedProfile) -> NewContact:
    """A new SmartPush contact from a mapped profile (owned fields: :func:`owned_fields_of`)."""
    return NewContact(
        email=mapped.email,
        phone=mapped.phone,
        name=mapped.name,
        country=mapped.country,
        email_subscription=mapped.email_status,
        sms_subscription=mapped.sms_status,
        properties=dict(mapped.properties),
    )


def _same_value(fname: str, a: str, b: str) -> bool:
    if fname == "email":
        return normalize_email_key(a) == normalize_email_key(b)
    return a == b


def _evidence(props: dict[str, Any], keys: tuple[str, ...]) -> tuple:
    return tuple(props.get(k) for k in keys)


def _cannot_receive(channel: str, props: dict[str, Any]) -> bool:
    """Whether the mirrored evidence says this address is globally barred from marketing.

    The spec gives two signals (components.schemas.EmailMarketing): a non-empty
    ``suppression`` array, and ``can_receive_email_marketing`` (required; "True if [the]
    profile does not have any global suppressions"). ``suppression`` is optional and
    nullable, so ``can_receive_email_marketing: false`` alone must count too.
    """
    if channel == "email":
        return bool(props.get("kla_email_suppressions")) or props.get("kla_email_can_receive_marketing") is False
    return props.get("kla_sms_can_receive_marketing") is False


def _mirrored_status(channel: str, props: dict[str, Any]) -> SubscriptionStatus | None:
    """The status the Klaviyo consent evidence mirrored in ``props`` maps to."""
    table, status_of = (_EMAIL_MARKETING, _email_status) if channel == "email" else (_SMS_MARKETING, _sms_status)
    return status_of({src: props.get(dst) for src, dst in table}, [])


def _merge_channel(
    channel: str,
    existing_status: SubscriptionStatus | None,
    incoming: SubscriptionStatus | None,
    *,
    address_matches: bool,
    old_props: dict[str, Any],
    mapped_props: dict[str, Any],
    keys: tuple[str, ...],
    primary: bool,
    notes: list[str],
) -> SubscriptionStatus | None:
    if incoming is None:
        return existing_status
    if not address_matches:
        notes.append(f"{channel}_status_not_applied:address_differs")
        return existing_status
    mirrored = any(k in old_props for k in keys)
    if not primary and incoming == SUBSCRIBED and _cannot_receive(channel, old_props):
        # Another Klaviyo profile of this address is globally suppressed (bounce, spam
        # complaint) or cannot receive marketing: a second profile's SUBSCRIBED must not
        # make the address sendable.
        notes.append(f"{channel}_status_not_applied:suppressed_elsewhere")
        return existing_status
    if primary and mirrored and existing_status is not None:
        if _evidence(old_props, keys) == _evidence(mapped_props, keys):
            # Klaviyo's consent did not change since it was last mirrored: SmartPush's own
            # later changes (an unsubscribe in SmartPush) must not be reverted by stale data.
            # An unknown status is still filled: the evidence may have been mirrored while
            # the profile had no address on this channel (a phone number that came later).
            return existing_status
        if existing_status == _mirrored_status(channel, old_props) and incoming != existing_status:
            # The status SmartPush holds is the one Klaviyo gave it (nobody changed it in
            # SmartPush since), and Klaviyo's consent changed: a suppression (hard bounce,
            # spam complaint), an unsubscribe or a re-subscribe. Klaviyo is the source of
            # that status, so it follows Klaviyo, both ways.
            notes.append(f"{channel}_status:{incoming}")
            return incoming
    # Consent precedence (the product rule): only a Klaviyo SUBSCRIBED overwrites a status
    # SmartPush holds; UNSUBSCRIBED / NEVER_SUBSCRIBED only fill an unknown one.
    result = merge_status(existing_status, incoming)
    if result != existing_status:
        notes.append(f"{channel}_status:{result}")
    return result


def merge_into(
    existing: Contact, mapped: MappedProfile, *, owned_fields: set[str], primary: bool
) -> tuple[Contact, set[str], list[str]]:
    """Merge a mapped profile into an existing contact; returns (new contact, owned fields, notes).

    ``existing`` is not modified. Notes are PII-free strings (``filled:phone``,
    ``kept_existing:name`` ...).
    """
    owned = set(owned_fields)
    notes: list[str] = []
    values: dict[str, Any] = {}
    for fname in STANDARD_FIELDS:
        new = getattr(mapped, fname)
        cur = getattr(existing, fname)
        if not new:
            continue  # an empty Klaviyo value never clears a contact's field
        if not cur:
            values[fname] = new
            owned.add(fname)
            notes.append(f"filled:{fname}")
        elif _same_value(fname, cur, new):
            if cur != new and fname in owned:
                values[fname] = new
                notes.append(f"updated:{fname}")
        elif fname in owned:
            values[fname] = new
            notes.append(f"updated:{fname}")
        else:
            notes.append(f"kept_existing:{fname}")
    final_email = values.get("email", existing.email)
    final_phone = values.get("phone", existing.phone)
    old_props = existing.properties or {}
    email_status = _merge_channel(
        "email",
        existing.email_subscription,
        mapped.email_status,
        address_matches=bool(final_email) and mapped.email_key == normalize_email_key(final_email),
        old_props=old_props,
        mapped_props=mapped.properties,
        keys=EMAIL_EVIDENCE_KEYS,
        primary=primary,
        notes=notes,
    )
    sms_status = _merge_channel(
        "sms",
        existing.sms_subscription,
        mapped.sms_status,
        address_matches=bool(final_phone) and mapped.phone == final_phone,
        old_props=old_props,
        mapped_props=mapped.properties,
        keys=SMS_EVIDENCE_KEYS,
        primary=primary,
        notes=notes,
    )
    props = dict(old_props)
    if primary:
        props.update(mapped.properties)
    else:
        for key, value in mapped.properties.items():
            if key not in props:
                props[key] = value
    merged = replace(
        existing,
        **values,
        email_subscription=email_status,
        sms_subscription=sms_status,
        properties=props,
    )
    return merged, owned, notes


def as_contact(uid: str, new: NewContact) -> Contact:
    """The :class:`Contact` ``uid`` holding ``new``'s fields (the one conversion)."""
    return Contact(uid=uid, email=new.email, phone=new.phone, name=new.name, country=new.country,
                   email_subscription=new.email_subscription, sms_subscription=new.sms_subscription,
                   properties=new.properties)


def as_new_contact(contact: Contact) -> NewContact:
    """``contact``'s fields as a :class:`NewContact`, its uid left out (the one conversion)."""
    return NewContact(email=contact.email, phone=contact.phone, name=contact.name, country=contact.country,
                      email_subscription=contact.email_subscription, sms_subscription=contact.sms_subscription,
                      properties=contact.properties)
