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

The check is a byte scan that costs a few microseconds per profile: it finds the number
literals that *might* not fit (16 or more digits, a 3-digit exponent), where JSON puts a
value, and looks at each one found: an integer below 2^63, or a decimal whose double
prints back as the same number (what any encoder of doubles writes:
``0.30000000000000004``), is read exactly by orjson too, so the page still goes through
orjson. (A scan for such runs anywhere sent most real pages down the slow path: ids and
hashes inside strings, such as ``"3E474"``, look like numbers.) ``NaN`` and ``Infinity``
are not JSON: orjson refuses the page and the standard library reads it.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

__all__ = ["loads", "exact_int", "exact_float"]

# Where a literal that may not fit can hide, once digits and the point read "0", ``E`` reads
# ``e`` and ``+`` reads ``-``: a run of 16 such characters, or a 3-digit exponent.
# ``bytes.find`` looks for these at C speed (~4 µs per profile; a regular expression over
# every byte of a page cost ~20); each hit is then judged as a token (:func:`_lossy`).
_NUMERIC = bytes.maketrans(b"123456789.E+", b"0000000000e-")
_NEEDLES = (b"0" * 16, b"e000", b"e-000")
_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_NUMBER_CHARS = frozenset(b"0123456789.eE+-")
_WHITESPACE = b" \t\r\n"
_INT_EXACT = 2**63  # orjson reads integers of 64 bits exactly (to 2^64 - 1 unsigned)


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
    if not _lossy(content):
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            pass  # NaN, Infinity, or not JSON at all: the standard library decides
    try:
        return json.loads(content, parse_int=exact_int, parse_float=exact_float, parse_constant=str)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _lossy(content: bytes) -> bool:
    """Whether orjson could read a number literal of ``content`` inexactly.

    A hit of a needle counts only if it lies in a number *token*: a literal that starts
    where JSON puts a value (after ``:``, ``,`` or ``[``) and ends before ``,``, ``}`` or
    ``]``. Inside strings, ids and hashes such as ``"3E474"`` or long digit runs are
    frequent and harmless."""
    shape = content.translate(_NUMERIC)
    for needle in _NEEDLES:
        at = shape.find(needle)
        while at != -1:
            start = at
            while start > 0 and content[start - 1] in _NUMBER_CHARS:
                start -= 1
            m = _NUMBER.match(content, start)
            end = m.end() if m else at + len(needle)
            if m is not None and end > at and _is_value(content, start, end):
                text = m.group()
                if b"." not in text and b"e" not in text and b"E" not in text:
                    if abs(int(text)) >= _INT_EXACT:
                        return True
                elif not isinstance(exact_float(text.decode("ascii")), float):
                    return True  # not finite, or not a double's own digits
            at = shape.find(needle, max(end, at + 1))
    return False


def _is_value(content: bytes, start: int, end: int) -> bool:
    """Whether ``content[start:end]`` stands where JSON puts a value (not inside a string)."""
    i = start - 1
    while i >= 0 and content[i] in _WHITESPACE:
        i -= 1
    j = end
    while j < len(content) and content[j] in _WHITESPACE:
        j += 1
    return (i < 0 or content[i] in b":,[") and (j == len(content) or content[j] in b",}]")


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
