"""What the Contacts page reads: one page of a store's contacts, optionally with one
tag, with their email and phone masked (the page never shows a whole address)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from smartpush_devhost.formatting import mask_email, mask_name, mask_phone
from smartpush_devhost.models import contacts_t, tags_t

PAGE_SIZE = 50
CUSTOM_TAG_PREFIX = "kla_"
"""Tags the Klaviyo integration writes; the page lists them as custom user tags."""


@dataclass
class ContactRow:
    uid: str
    email: str
    phone: str
    name: str
    email_subscription: str
    sms_subscription: str
    tags: list[str]

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def list_contacts(host, store_id: str, tag: str | None, page: int = 1) -> list[ContactRow]:
    """One page (``PAGE_SIZE``) of the store's contacts in uid order, masked."""
    store = host.contacts(store_id)
    offset = (max(1, page) - 1) * PAGE_SIZE
    if tag:
        stmt = (select(tags_t.c.contact_uid).where(tags_t.c.store_id == store_id, tags_t.c.tag == tag)
                .order_by(tags_t.c.contact_uid).limit(PAGE_SIZE).offset(offset))
    else:
        stmt = (select(contacts_t.c.uid).where(contacts_t.c.store_id == store_id)
                .order_by(contacts_t.c.uid).limit(PAGE_SIZE).offset(offset))
    with host.storage.transaction(readonly=True) as tx:
        uids = list(tx.execute(stmt).scalars())
        contacts = store.get_many(tx, uids)
        tags = store.tags_of(tx, uids)
    rows = []
    for uid in uids:
        c = contacts.get(uid)
        if c is None:
            continue
        rows.append(ContactRow(uid=uid, email=mask_email(c.email), phone=mask_phone(c.phone), name=mask_name(c.name),
                               email_subscription=c.email_subscription or "unknown",
                               sms_subscription=c.sms_subscription or "unknown", tags=sorted(tags.get(uid, ()))))
    return rows


def tag_summary(host, store_id: str) -> tuple[dict[str, int], dict[str, int]]:
    """(custom user tags written by integrations: ``kla_*``, other tags) with contact counts."""
    with host.storage.transaction(readonly=True) as tx:
        counts = host.contacts(store_id).tag_counts(tx)
    custom = {t: n for t, n in counts.items() if t.startswith(CUSTOM_TAG_PREFIX)}
    other = {t: n for t, n in counts.items() if not t.startswith(CUSTOM_TAG_PREFIX)}
    return custom, other
