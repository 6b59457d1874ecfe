"""A second, independent Klaviyo on 127.0.0.1, written from the OpenAPI spec alone.

``klaviyo_standin`` is our own stand-in: the plugin may lean on what it happens to do.
This small server answers the same GET endpoints in ways the spec allows but the stand-in
never does, each switched on by a :class:`Quirks` field, so a test can show the plugin
copes (real sockets, no mocks):

* pages smaller than ``page[size]`` (the spec gives a maximum, not a promise);
* the first page of every collection empty but with a ``links.next``;
* ``links.next`` as Klaviyo writes it (absolute, trailing slash, percent-encoded
  brackets, every parameter repeated, an extra one), ``"next": null`` on the last page,
  and optionally under another spelling of the server's host;
* filter datetimes accepted only in the form of the spec's own example
  (``less-or-equal(created,2022-11-08T00:00:00+00:00)``: no fraction);
* ``additional-fields[list|segment]=profile_count`` ignored (the attribute is nullable);
* relationship items with only ``type`` and ``id``;
* profiles missing from ``updated`` queries for a while (index lag);
* a key without some scopes, refused with a 403 whose wording names no scope;
* ``profile_count`` updated lazily (a stale value per group);
* memberships without a ``joined_group_at`` (``None`` in ``members``): like SQL's NULL,
  no comparison on it is true, so only an unfiltered request returns them.

Data is plain resources (``profiles``: JSON:API profile dicts; ``groups``: list/segment
dicts with ``kind``; ``members``: group id -> [(profile id, joined_group_at datetime)]);
tests edit them between syncs. Timestamps in the data are served exactly as given.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl, quote, urlsplit

from tests._scripted_server import LoopbackServer

JSONAPI = "application/vnd.api+json"
KEY = "pk_" + "5" * 34

_STRICT_DT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:Z|[+-]\d{2}:\d{2})$")
_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)


@dataclass
class Quirks:
    max_page: int | None = None
    """Serve at most this many records per page, whatever ``page[size]`` asked."""
    empty_first_page: bool = False
    """The first page of every collection has ``data: []`` and a ``links.next``."""
    strict_filter_datetimes: bool = False
    """Filter datetimes only as ``YYYY-MM-DDTHH:MM:SS+00:00`` (the spec's example)."""
    profile_count: bool = True
    """``False``: ``additional-fields[...]=profile_count`` is ignored."""
    link_origin: str | None = None
    """Write links with this scheme://host:port (e.g. ``http://LOCALHOST:<port>``, the
    same server under another spelling) instead of the address the client used."""
    unindexed: frozenset[str] = frozenset()
    """Profile ids the ``updated`` index does not hold yet (index lag): queries that filter
    or sort on ``updated`` miss them, lookups by id still find them."""
    scopes: frozenset[str] | None = None
    """The key's scopes (``None``: all). An endpoint needing another one (its
    ``x-klaviyo-scopes``) answers 403 ``permission_denied`` with a generic detail."""
    stale_counts: dict | None = None
    """group id -> the ``profile_count`` served (counts updated lazily)."""
    refuse_cursor_every: int | None = None
    """Every n-th cursor not refused before is refused (400 on ``page[cursor]``), once:
    cursors expire, on every kind of read; a read restarted gets through."""
    pages_without_data: int = 0
    """The next n pages of ``/api/profiles`` come without ``data`` (a broken answer)."""
    loop_next: bool = False
    """``links.next`` of a cursor page points back at the same cursor (a pagination loop)."""


def parse_ts(text) -> datetime | None:
    """An RFC 3339 timestamp (any fraction length, ``Z``/``z``/offset) as aware UTC."""
    if not isinstance(text, str):
        return None
    m = _RFC3339.match(text.strip())
    if not m:
        return None
    date, clock, frac, off = m.groups()
    frac = (frac or "0")[:6].ljust(6, "0")
    off = "+00:00" if off in ("Z", "z") else off
    return datetime.fromisoformat(f"{date}T{clock}.{frac}{off}").astimezone(timezone.utc)


class FilterError(ValueError):
    pass


def _split(text: str) -> list[str]:
    """Split on top-level commas (outside parentheses, brackets and quotes)."""
    parts, depth, quote_ch, cur = [], 0, None, []
    for ch in text:
        if quote_ch:
            cur.append(ch)
            if ch == quote_ch:
                quote_ch = None
            continue
        if ch in "'\"":
            quote_ch = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def _value(text: str, strict: bool):
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [_value(v, strict) for v in _split(inner)] if inner else []
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if strict and not _STRICT_DT.match(text):
        raise FilterError(f"'{text}' is not a valid datetime")
    dt = parse_ts(text)
    if dt is None:
        raise FilterError(f"'{text}' is not a valid value")
    return dt


def parse_filter(text: str, strict: bool) -> list[tuple[str, str, object]]:
    """``op(field,value)``, ``and(...)`` and top-level commas -> [(op, field, value)]."""
    out: list[tuple[str, str, object]] = []
    for part in _split(text):
        m = re.match(r"^([a-z\-]+)\((.*)\)$", part, re.DOTALL)
        if not m:
            raise FilterError(f"cannot parse filter {part!r}")
        op, args = m.group(1), m.group(2)
        if op == "and":
            out.extend(parse_filter(args, strict))
            continue
        fields = _split(args)
        if len(fields) != 2:
            raise FilterError(f"{op} takes two arguments")
        out.append((op, fields[0], _value(fields[1], strict)))
    return out


def matches(conds, get) -> bool:
    for op, name, target in conds:
        v = get(name)
        if op == "equals":
            ok = v == target
        elif op == "any":
            ok = v in target
        else:
            if v is None:
                return False
            ok = {
                "greater-than": v > target,
                "less-than": v < target,
                "greater-or-equal": v >= target,
                "less-or-equal": v <= target,
            }[op]
        if not ok:
            return False
    return True


_SUPPRESSION_FIELDS = {
    "subscriptions.email.marketing.suppression.timestamp": "suppression",
    "subscriptions.email.marketing.list_suppressions.timestamp": "list_suppressions",
}
"""The spec's suppression-timestamp filters and sorts of ``GET /api/profiles``."""


class SpecServer(LoopbackServer):
    """The server; ``profiles``, ``groups``, ``members`` and ``quirks`` may be edited live."""

    def __init__(self, profiles=(), groups=(), members=None, quirks: Quirks | None = None, key: str = KEY):
        self.profiles: list[dict] = list(profiles)
        self.groups: list[dict] = list(groups)
        self.members: dict[str, list[tuple[str, datetime]]] = dict(members or {})
        self.quirks = quirks or Quirks()
        self.key = key
        self.requests: list[str] = []
        self.errors: list[tuple[int, str]] = []
        self.cursor_requests = 0
        self.refused_cursors: set[str] = set()
        self.lock = threading.RLock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                status, body = outer._handle(self.path, self.headers)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", JSONAPI)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._listen(Handler)

    # ------------------------------------------------------------------ dispatch
    def _handle(self, raw: str, headers) -> tuple[int, dict]:
        parts = urlsplit(raw)
        path = parts.path.rstrip("/")
        q = dict(parse_qsl(parts.query, keep_blank_values=True))
        with self.lock:
            self.requests.append(raw)
        if headers.get("Authorization") != f"Klaviyo-API-Key {self.key}":
            return self._error(401, "not_authenticated", "Authentication credentials were not provided.")
        needed = _scopes_of(path)
        if self.quirks.scopes is not None and not needed <= self.quirks.scopes:
            return self._error(403, "permission_denied", "You do not have permission to perform this action.")
        try:
            seg = path.split("/")  # ["", "api", collection, id?, "relationships"?, "profiles"?]
            if path == "/api/profiles":
                return 200, self._profiles(path, q)
            if path in ("/api/lists", "/api/segments"):
                return 200, self._groups(path, seg[2][:-1], q)
            if len(seg) == 4 and seg[2] in ("lists", "segments"):
                return 200, self._group_detail(path, seg[2][:-1], seg[3], q)
            if len(seg) == 6 and seg[2] in ("lists", "segments") and seg[4:] == ["relationships", "profiles"]:
                return 200, self._members(path, seg[2][:-1], seg[3], q)
            return self._error(404, "not_found", "Not found.")
        except FilterError as exc:
            return self._error(400, "invalid", str(exc), "filter")
        except _NotFound as exc:
            return self._error(404, "not_found", str(exc))
        except _BadParam as exc:
            return self._error(400, "invalid", str(exc), exc.parameter)

    def _error(self, status: int, code: str, detail: str, parameter: str | None = None) -> tuple[int, dict]:
        err = {"id": "0f0e", "status": status, "code": code, "title": detail, "detail": detail}
        if parameter:
            err["source"] = {"parameter": parameter}
        with self.lock:
            self.errors.append((status, detail))
        return status, {"errors": [err]}

    # ------------------------------------------------------------------ paging
    def _page(self, path: str, q: dict, rows: list, size_max: int) -> tuple[list, dict]:
        try:
            size = int(q.get("page[size]", min(20, size_max)))
        except ValueError:
            raise _BadParam("page[size] is not an integer", "page[size]") from None
        if not 1 <= size <= size_max:
            raise _BadParam(f"Page size must be between 1 and {size_max}.", "page[size]")
        served = min(size, self.quirks.max_page or size)
        cursor = q.get("page[cursor]")
        if cursor is None:
            start = 0
            if self.quirks.empty_first_page:
                served = 0
        else:
            with self.lock:
                self.cursor_requests += 1
                refuse = (
                    bool(self.quirks.refuse_cursor_every)
                    and cursor not in self.refused_cursors
                    and self.cursor_requests % self.quirks.refuse_cursor_every == 0
                )
                if refuse:
                    self.refused_cursors.add(cursor)
            if refuse:
                raise _BadParam("The page cursor has expired.", "page[cursor]")
            try:
                start = int(base64.urlsafe_b64decode(cursor.encode()).decode().split(":")[1])
            except (ValueError, IndexError):
                raise _BadParam("Invalid page cursor.", "page[cursor]") from None
            if self.quirks.loop_next:
                links = {"self": self._link(path, q, cursor), "next": self._link(path, q, cursor)}
                return rows[start : start + served], links
        data = rows[start : start + served]
        links = {"self": self._link(path, q, None), "next": None}
        end = start + served
        if end < len(rows):
            links["next"] = self._link(path, q, base64.urlsafe_b64encode(f"offset:{end}".encode()).decode())
        return data, links

    def _link(self, path: str, q: dict, cursor: str | None) -> str:
        """Like Klaviyo's: absolute, trailing slash, brackets percent-encoded, every
        parameter repeated, plus one the client never sent."""
        params = {k: v for k, v in q.items() if k != "page[cursor]"}
        if cursor is not None:
            params = {"page[cursor]": cursor, **params}
        params["_kx_src"] = "spec"
        query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params.items())
        return f"{self.quirks.link_origin or self.base_url}{path}/?{query}"

    # ------------------------------------------------------------------ endpoints
    def _profiles(self, path: str, q: dict) -> dict:
        conds = parse_filter(q["filter"], self.quirks.strict_filter_datetimes) if "filter" in q else []
        for _, name, _v in conds:
            if name not in ("id", "updated", "created", "email", *_SUPPRESSION_FIELDS):
                raise FilterError(f"'{name}' is not a valid filter field")
        sort = q.get("sort", "id")
        if sort.lstrip("-") not in ("id", "updated", "created", *_SUPPRESSION_FIELDS):
            raise _BadParam(f"'{sort}' is not a valid sort", "sort")
        with self.lock:
            profiles = list(self.profiles)

        def get(resource):
            attrs = resource.get("attributes") or {}

            def field(name):
                if name == "id":
                    return resource.get("id")
                if name in ("updated", "created"):
                    return parse_ts(attrs.get(name))
                if name in _SUPPRESSION_FIELDS:
                    # the newest timestamp of the array (a comparison holds for any entry)
                    marketing = ((attrs.get("subscriptions") or {}).get("email") or {}).get("marketing") or {}
                    entries = marketing.get(_SUPPRESSION_FIELDS[name]) or []
                    stamps = [parse_ts(e.get("timestamp")) for e in entries if isinstance(e, dict)]
                    return max((t for t in stamps if t), default=None)
                return attrs.get(name)
            return field

        if sort.lstrip("-") == "updated" or any(name == "updated" for _, name, _v in conds):
            profiles = [p for p in profiles if p["id"] not in self.quirks.unindexed]
        rows = [p for p in profiles if matches(conds, get(p))]
        key_name = sort.lstrip("-")
        desc = sort.startswith("-")
        if key_name == "id":
            rows.sort(key=lambda p: p["id"], reverse=desc)
        else:
            # PostgreSQL order: NULLs last ascending, first descending.
            present = [p for p in rows if get(p)(key_name) is not None]
            missing = [p for p in rows if get(p)(key_name) is None]
            present.sort(key=lambda p: (get(p)(key_name), p["id"]), reverse=desc)
            rows = missing + present if desc else present + missing
        data, links = self._page(path, q, rows, 100)
        with self.lock:
            if self.quirks.pages_without_data > 0:
                self.quirks.pages_without_data -= 1
                return {"links": links}
        subscriptions = "subscriptions" in q.get("additional-fields[profile]", "")
        out = []
        for p in data:
            p = json.loads(json.dumps(p))
            attrs = p.setdefault("attributes", {})
            if not subscriptions:
                attrs.pop("subscriptions", None)
            out.append(p)
        return {"data": out, "links": links}

    def _groups(self, path: str, kind: str, q: dict) -> dict:
        with self.lock:
            rows = sorted((g for g in self.groups if g["kind"] == kind), key=lambda g: g["id"])
        data, links = self._page(path, q, rows, 10)
        return {"data": [self._group_resource(g) for g in data], "links": links}

    def _group_resource(self, g: dict, count: int | None = None) -> dict:
        attrs = {k: v for k, v in g.items() if k not in ("id", "kind")}
        if count is not None:
            attrs["profile_count"] = count
        return {"type": g["kind"], "id": g["id"], "attributes": attrs,
                "links": {"self": f"{self.base_url}/api/{g['kind']}s/{g['id']}/"}}

    def _group(self, kind: str, gid: str) -> dict:
        with self.lock:
            for g in self.groups:
                if g["id"] == gid and g["kind"] == kind:
                    return g
        raise _NotFound(f"A {kind} with id {gid} does not exist.")

    def _group_detail(self, path: str, kind: str, gid: str, q: dict) -> dict:
        g = self._group(kind, gid)
        count = None
        if "profile_count" in q.get(f"additional-fields[{kind}]", "") and self.quirks.profile_count:
            count = len(self.members.get(gid, []))
            if self.quirks.stale_counts and gid in self.quirks.stale_counts:
                count = self.quirks.stale_counts[gid]
        return {"data": self._group_resource(g, count), "links": {"self": self._link(path, q, None)}}

    def _members(self, path: str, kind: str, gid: str, q: dict) -> dict:
        self._group(kind, gid)
        conds = parse_filter(q["filter"], self.quirks.strict_filter_datetimes) if "filter" in q else []
        for _, name, _v in conds:
            if name != "joined_group_at":
                raise FilterError(f"'{name}' is not a valid filter field")
        with self.lock:
            rows = sorted(self.members.get(gid, []), key=lambda m: (m[1] is None, m[1] or datetime.min.replace(tzinfo=timezone.utc), m[0]))
        rows = [m for m in rows if matches(conds, lambda _n, m=m: m[1])]
        data, links = self._page(path, q, rows, 100)
        return {"data": [{"type": "profile", "id": pid} for pid, _ in data], "links": links}


def _scopes_of(path: str) -> frozenset[str]:
    """``x-klaviyo-scopes`` of the GET endpoints served (paths.<template>.get)."""
    seg = path.split("/")
    kind = seg[2] if len(seg) > 2 else ""
    needed = {"profiles": {"profiles:read"}, "lists": {"lists:read"}, "segments": {"segments:read"}}.get(kind, set())
    if len(seg) == 6 and seg[4:] == ["relationships", "profiles"]:
        needed = needed | {"profiles:read"}
    return frozenset(needed)


class _NotFound(Exception):
    pass


class _BadParam(Exception):
    def __init__(self, message: str, parameter: str):
        super().__init__(message)
        self.parameter = parameter
