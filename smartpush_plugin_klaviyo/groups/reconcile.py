"""Lists and segments: fetch them all, then reconcile groups and their tags.

Groups are few (dozens, rarely thousands), so they are read whole each run: that is
how new, renamed and deleted groups are found. Tags are assigned by
:func:`mapping.assign_tags`, which keeps collisions stable from run to run.
"""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import and_, delete, insert, select, update

from smartpush_plugin_klaviyo import mapping
from smartpush_plugin_klaviyo.models import KlaviyoGroup, parse_group
from smartpush_plugin_klaviyo.pagination import paginate
from smartpush_plugin_klaviyo.state import group_t, membership_t
from smartpush_plugin_klaviyo.writer import PageWriter

GROUP_ENDPOINTS = {"list": "/api/lists", "segment": "/api/segments"}
GROUP_FIELDS = {
    "list": "name,created,updated",
    "segment": "name,created,updated,is_active",
}


def fetch_groups(client) -> Iterator[KlaviyoGroup]:
    """Every list and segment of the account, once each (pages of 10, the spec's maximum;
    a read restarted after a refused cursor repeats pages, so groups are keyed by id)."""
    for kind, path in GROUP_ENDPOINTS.items():
        found: dict[str, KlaviyoGroup] = {}
        for page in paginate(client, path, {f"fields[{kind}]": GROUP_FIELDS[kind], "page[size]": 10}):
            for resource in page.data:
                group = parse_group(resource, kind)
                if group is not None:
                    found[group.id] = group
        yield from found.values()


def apply_groups(tx, writer: PageWriter, groups: list) -> dict[str, int]:
    """Reconcile stored groups with the account's current ones; returns counts."""
    store = writer.store_id
    contacts = writer.ctx.contacts
    stored = {row.group_id: row for row in tx.execute(select(group_t).where(group_t.c.store_id == store))}
    infos = [
        mapping.GroupInfo(group_id=g.id, kind=g.kind, name=g.name, created=g.created)
        for g in groups
    ]
    tags, collisions = mapping.assign_tags(infos)
    counts = {"groups": len(groups), "groups_created": 0, "groups_renamed": 0, "groups_deleted": 0}
    current_ids = {g.id for g in groups}
    # Deleted groups first: their tags leave every contact, their memberships are forgotten.
    for gid, row in stored.items():
        if gid in current_ids:
            continue
        contacts.delete_tag(tx, row.tag)
        tx.execute(delete(membership_t).where(and_(membership_t.c.store_id == store, membership_t.c.group_id == gid)))
        tx.execute(delete(group_t).where(and_(group_t.c.store_id == store, group_t.c.group_id == gid)))
        counts["groups_deleted"] += 1
    # Renames in two steps (old -> temporary -> new) so swapped names never collide.
    renamed = [(gid, stored[gid].tag, tags[gid]) for gid in current_ids if gid in stored and stored[gid].tag != tags[gid]]
    for gid, old, _new in renamed:
        contacts.rename_tag(tx, old, f"kla_renaming_{gid}")
    for gid, _old, new in renamed:
        contacts.rename_tag(tx, f"kla_renaming_{gid}", new)
    counts["groups_renamed"] = len(renamed)
    for g in groups:
        values = dict(
            kind=g.kind,
            name=g.name,
            tag=tags[g.id],
            created=g.created.isoformat() if g.created else None,
            updated=g.updated.isoformat() if g.updated else None,
            is_active=bool(g.is_active),
            last_seen_run=writer.run_id,
        )
        if g.id in stored:
            tx.execute(update(group_t).where(and_(group_t.c.store_id == store, group_t.c.group_id == g.id)).values(**values))
        else:
            tx.execute(insert(group_t).values(store_id=store, group_id=g.id, **values))
            counts["groups_created"] += 1
    for collision in collisions:
        writer.record_event(tx, "tag_collision", str(collision))
    counts["tag_collisions"] = len(collisions)
    writer.forget_groups()
    # Members a stopped run stored untagged get their tags now; groups holding no
    # members get theirs when this run's reading ends (PageWriter.apply_deferred_tags).
    writer.apply_deferred_tags(tx)
    writer.defer_tags_of_empty_groups(tx)
    return counts
