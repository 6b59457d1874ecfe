"""Decoding Klaviyo's JSON exactly: fast when nothing can be lost, exact when something could.

orjson reads a number beyond 64 bits as a float (``18446744073709552653`` becomes
``1.8446744073709552e+19``) and a decimal with more digits than a double holds as the
nearest double, silently. A custom property must arrive as Klaviyo holds it, so a page
whose bytes contain such a literal (or ``NaN``/``Infinity``, which are not JSON) is read
by the standard library instead, keeping each value exactly:

* an integer stays an ``int``, exact however long (Python's ints are);
* a decimal that a double round-trips stays a ``float``; any other (too many digits, or
  beyond a double's range) becomes its text, digit for digit (a ``str``: no store or
  export can lose it);
* ``NaN``, ``Infinity`` and ``-Infinity`` become their text.

The check is a byte scan that costs a few microseconds per profile; well-formed pages
(almost all) still go through orjson.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

__all__ = ["loads", "exact_int", "exact_float"]

# A run of 16+ digits (possibly with one decimal point inside), an exponent of 3+
# digits, or a non-JSON constant: the literals a double or a 64-bit integer may not hold.
_MAYBE_LOSSY = re.compile(rb"\d{16,}|\d+\.\d+(?<=[0-9.]{17})|[eE][+-]?\d{3,}|NaN|Infinity")


def exact_int(text: str) -> int:
    return int(text)


def exact_float(text: str) -> float | str:
    value = float(text)
    if not math.isfinite(value):
        return text
    try:
        if Decimal(text) == Decimal(repr(value)):
            return value
    except InvalidOperation:  # pragma: no cover - json only hands us valid literals
        pass
    return text


def loads(content: bytes | str) -> Any:
    """Decode a JSON document exactly (see the module docstring). Raises ``ValueError``
    when the body is not JSON."""
    if isinstance(content, str):
        content = content.encode()
    if _MAYBE_LOSSY.search(content) is None:
        return orjson.loads(content)
    try:
        return json.loads(content, parse_int=exact_int, parse_float=exact_float, parse_constant=str)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


_ID = re.compile(rb'"id"\s*:\s*"([^"\\]{1,200})"')


def split_collection(content: bytes) -> tuple[dict, list[bytes]] | None:
    """A collection document that no decoder read whole, cut into its envelope (``data``
    emptied) and the raw bytes of each ``data`` item, so one bad resource (nested past
    any decoder's depth, say) spoils only itself. ``None`` when the bytes are not even
    shaped like a collection. A byte scan: no recursion, whatever the depth."""
    start = re.search(rb'"data"\s*:\s*\[', content)
    if start is None:
        return None
    items: list[bytes] = []
    i, n = start.end(), len(content)
    depth, in_string, item_start = 0, False, None
    while i < n:
        c = content[i]
        if in_string:
            if c == 0x5C:  # backslash: skip the escaped byte
                i += 2
                continue
            if c == 0x22:
                in_string = False
        elif c == 0x22:
            in_string = True
            if item_start is None:
                item_start = i
        elif c in (0x7B, 0x5B):  # { [
            if item_start is None:
                item_start = i
            depth += 1
        elif c in (0x7D, 0x5D):  # } ]
            if depth == 0:  # the end of the data array
                if item_start is not None:
                    items.append(content[item_start:i].strip())
                envelope = content[: start.end()] + content[i:]
                try:
                    doc = loads(envelope)
                except (ValueError, RecursionError):
                    return None
                return (doc, items) if isinstance(doc, dict) else None
            depth -= 1
        elif c == 0x2C and depth == 0:  # a comma between items
            if item_start is not None:
                items.append(content[item_start:i].strip())
            item_start = None
        elif item_start is None and c not in (0x20, 0x0A, 0x0D, 0x09):
            item_start = i
        i += 1
    return None


def resource_id(raw: bytes) -> str:
    """The ``id`` of a resource read from its raw bytes ('' when none is found)."""
    m = _ID.search(raw[:4096])
    return m.group(1).decode("utf-8", "replace") if m else ""
