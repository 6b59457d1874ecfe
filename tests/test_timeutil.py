"""timeutil.format_iso: the stored form of a timestamp (the id map's ``created``, run records)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from smartpush_plugin_klaviyo.timeutil import format_iso, parse_iso


def test_format_iso_is_utc_with_microseconds_and_an_explicit_offset():
    assert format_iso(datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)) == "2024-01-02T03:04:05.000006+00:00"
    # another offset is converted, a naive value is taken to be UTC already
    plus_two = timezone(timedelta(hours=2))
    assert format_iso(datetime(2024, 1, 2, 3, 4, 5, tzinfo=plus_two)) == "2024-01-02T01:04:05.000000+00:00"
    assert format_iso(datetime(2024, 1, 2, 3, 4, 5)) == "2024-01-02T03:04:05.000000+00:00"


def test_format_iso_reads_back_as_the_same_instant():
    value = datetime(2023, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5)))
    assert parse_iso(format_iso(value)) == value
