"""Benchmark: the issue's yardstick, the official Klaviyo Python SDK in a plain loop.

Not a test: it prints figures. Usage (the SDK is not a dependency of the plugin)::

    pip install -e '.[bench]'        # klaviyo-api, the official SDK
    python benchmarks/sdk_baseline.py --profiles 20000

It starts the same stand-in process as ``full_sync.py`` (same ``--profiles``/``--seed``,
no latency, no rate limits) and reads it with ``klaviyo_api.KlaviyoAPI`` the way a plain
script would: every profile page with ``additional-fields[profile]=subscriptions`` (100 a
page), then the member ids of every list and segment (100 a page), one request after the
other, keeping nothing. It prints profiles, memberships, wall time, this process's CPU and
profiles per second: what "fetch only, store nothing" costs on this machine, next to which
``full_sync.py --no-rate-limits`` (fetch, map, encrypt, merge and write into SQLite) is read.

The SDK sends its own API revision; the stand-in answers only the spec's revision
(``2026-07-15``), so the script sends that one (the endpoints read here are the same).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from full_sync import StandIn  # noqa: E402  (the same stand-in process as the full sync benchmark)

REVISION = "2026-07-15"


def _field(obj, name: str):
    """An attribute of an SDK model, or a key of a dict (the SDK may return either)."""
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _next_cursor(response) -> str | None:
    links = _field(response, "links")
    url = _field(links, "next") if links is not None else None
    if not url:
        return None
    return (parse_qs(urlsplit(url).query).get("page[cursor]") or [None])[0]


def _pages(call, *args, **kwargs):
    """Every page of a cursor-paginated SDK call."""
    cursor = None
    while True:
        response = call(*args, page_cursor=cursor, **kwargs) if cursor else call(*args, **kwargs)
        yield response
        cursor = _next_cursor(response)
        if not cursor:
            return


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profiles", type=int, default=20000)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    try:
        from klaviyo_api import KlaviyoAPI
    except ImportError:
        print("needs the official SDK: pip install -e '.[bench]' (or pip install klaviyo-api)", file=sys.stderr)
        return 2

    stand_in_args = argparse.Namespace(profiles=args.profiles, seed=args.seed, groups=None, latency=0.0,
                                       no_rate_limits=True, clock_scale=1.0)
    with tempfile.TemporaryDirectory(prefix="klaviyo-sdk-") as tmp:
        standin = StandIn(stand_in_args, Path(tmp) / "standin.log")
        try:
            sdk = KlaviyoAPI(standin.api_key, test_host=standin.base_url, max_retries=3)
            sdk.api_client.default_headers["revision"] = REVISION
            standin_cpu0 = standin.cpu_seconds() or 0.0
            cpu0, t0 = time.process_time(), time.perf_counter()
            profiles = 0
            for page in _pages(sdk.Profiles.get_profiles, additional_fields_profile=["subscriptions"], page_size=100):
                profiles += len(_field(page, "data") or [])
            profiles_wall = time.perf_counter() - t0
            groups = [(sdk.Lists.get_profile_ids_for_list, _field(g, "id"))
                      for page in _pages(sdk.Lists.get_lists) for g in _field(page, "data") or []]
            groups += [(sdk.Segments.get_profile_ids_for_segment, _field(g, "id"))
                       for page in _pages(sdk.Segments.get_segments) for g in _field(page, "data") or []]
            memberships = 0
            for call, group_id in groups:
                for page in _pages(call, group_id, page_size=100):
                    memberships += len(_field(page, "data") or [])
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            standin_cpu = (standin.cpu_seconds() or 0.0) - standin_cpu0
        finally:
            standin.stop()
    print(f"sdk            : klaviyo-api (official SDK), revision header {REVISION}")
    print(f"profiles       : {profiles} (profile pages alone: {profiles_wall:.2f} s)")
    print(f"lists/segments : {len(groups)} groups, {memberships} memberships")
    print(f"wall           : {wall:.2f} s   (SDK process CPU {cpu:.2f} s; stand-in CPU {standin_cpu:.2f} s)")
    print(f"profiles/s     : {profiles / wall:.1f}   (fetch only, nothing mapped or stored)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
