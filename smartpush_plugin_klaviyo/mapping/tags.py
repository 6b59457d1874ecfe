"""Tags of Klaviyo lists and segments: ``kla_list_<name>`` / ``kla_segment_<name>``.

Pure functions (no I/O). The rules are tables in ``docs/mapping.md``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from smartpush_plugin_klaviyo.mapping.profile import PREFIX


# --------------------------------------------------------------------------- tags
_WHITESPACE = re.compile(r"\s+")


def normalize_group_name(name: Any) -> str:
    """Trimmed, NFC, ``str.lower()``, each run of whitespace one ``_``; ``""`` for no name."""
    if not isinstance(name, str):
        return ""
    return _WHITESPACE.sub("_", unicodedata.normalize("NFC", name).strip().lower())


def base_tag(kind: str, name: Any, group_id: str) -> str:
    """``kla_list_<name>`` / ``kla_segment_<name>``; a group without a name uses its id."""
    n = normalize_group_name(name) or normalize_group_name(group_id)
    return f"{PREFIX}{kind}_{n}"


@dataclass(frozen=True, slots=True)
class GroupInfo:
    group_id: str
    kind: str
    name: str | None
    created: datetime | None = None


@dataclass(frozen=True, slots=True)
class Collision:
    """Groups of one kind whose names normalize to the same tag (group names are not PII)."""

    kind: str
    base_tag: str
    winner: str
    """The group that keeps :attr:`base_tag` (created first; ties: smaller id)."""
    tags: tuple[tuple[str, str], ...]
    """``(group_id, tag)`` of every group involved, winner first."""

    def __str__(self) -> str:
        others = ", ".join(f"{gid} -> {tag}" for gid, tag in self.tags[1:])
        return f"{self.kind} tag {self.base_tag} kept by {self.winner}; {others}"


_FAR_FUTURE = datetime.max.replace(tzinfo=timezone.utc)


def _created_key(created: datetime | None) -> datetime:
    if not isinstance(created, datetime):
        return _FAR_FUTURE
    return created if created.tzinfo else created.replace(tzinfo=timezone.utc)


def assign_tags(groups: Iterable[GroupInfo]) -> tuple[dict[str, str], list[Collision]]:
    """A unique tag per group id, deterministic whatever the input order.

    Groups whose base tags collide: the one created first (unknown creation date counts as
    last; ties: smaller id) keeps the base tag, each other gets ``<base>_<id lowercased>``
    (and ``_2``, ``_3`` ... in the pathological case that this is taken as well).
    """
    unique: dict[str, GroupInfo] = {}
    for g in groups:
        unique.setdefault(g.group_id, g)  # the same id twice: the first one describes it
    ordered = sorted(unique.values(), key=lambda g: (_created_key(g.created), g.group_id))
    by_base: dict[str, list[GroupInfo]] = {}
    for g in ordered:
        by_base.setdefault(base_tag(g.kind, g.name, g.group_id), []).append(g)
    tags: dict[str, str] = {}
    taken: set[str] = set(by_base)
    for base, members in by_base.items():
        tags[members[0].group_id] = base
    collisions: list[Collision] = []
    for base in sorted(by_base):
        members = by_base[base]
        if len(members) < 2:
            continue
        for g in members[1:]:
            tag = f"{base}_{g.group_id.lower()}"
            if tag in taken:
                n = 2
                while f"{tag}_{n}" in taken:
                    n += 1
                tag = f"{tag}_{n}"
            taken.add(tag)
            tags[g.group_id] = tag
        collisions.append(
            Collision(
                kind=members[0].kind,
                base_tag=base,
                winner=members[0].group_id,
                tags=tuple((g.group_id, tags[g.group_id]) for g in members),
            )
        )
    return tags, collisions
