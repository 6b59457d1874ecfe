#!/usr/bin/env bash
# Benchmark: peak RSS of `smartpush sync klaviyo --full` as a user runs it (issue #13's measure).
#
# Not a test: it prints figures. Usage, from a checkout with the package installed:
#
#     benchmarks/cli_peak_rss.sh 1000000          # Klaviyo's real limits (the run is paced by them)
#     benchmarks/cli_peak_rss.sh 1000000 --fast   # the stand-in and the client without limits
#     benchmarks/cli_peak_rss.sh 100000 --latency 0.2   # more arguments go to the stand-in
#
# The stand-in runs as its own process (`python -m klaviyo_standin`), the command in a fresh
# data dir (SQLite) under `/usr/bin/time -v`, whose "Maximum resident set size" is the
# largest of the command and each of its children (the helper processes), not their sum.
set -euo pipefail
profiles=${1:-100000}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/smartpush-rss.XXXXXX")
trap 'kill "$standin" 2>/dev/null || true; rm -rf "$work"' EXIT
export PYTHONPATH="$root:$root/fixtures${PYTHONPATH:+:$PYTHONPATH}"
shift || true
standin_args=()
for arg in "$@"; do
    if [ "$arg" = "--fast" ]; then
        standin_args+=(--no-rate-limits)
        export KLAVIYO_RATE_LIMITS=off
    else
        standin_args+=("$arg")
    fi
done
python -m klaviyo_standin --profiles "$profiles" --seed 7 --port 0 "${standin_args[@]}" >"$work/standin.out" 2>"$work/standin.err" &
standin=$!
for _ in $(seq 1 300); do [ "$(wc -l <"$work/standin.out")" -ge 2 ] && break; sleep 1; done
KLAVIYO_BASE_URL=$(sed -n 1p "$work/standin.out")
KLAVIYO_API_KEY=$(sed -n 2p "$work/standin.out")
export KLAVIYO_BASE_URL KLAVIYO_API_KEY
smartpush --home "$work/home" install klaviyo >/dev/null
smartpush --home "$work/home" authorize klaviyo >/dev/null
/usr/bin/time -v smartpush --home "$work/home" sync klaviyo --full --json --no-progress >"$work/report.json" 2>"$work/time.txt"
python - "$work/report.json" "$work/time.txt" <<'EOF'
import json, re, sys
report = json.load(open(sys.argv[1]))
timing = open(sys.argv[2]).read()
field = lambda name: re.search(rf"{name}.*?: (.+)", timing).group(1).strip()
counts = report["counts"]
print(f"outcome        : {report['outcome']}")
print(f"profiles       : {counts.get('profiles_seen', 0):,} seen, {counts.get('profiles_imported', 0):,} imported")
print(f"memberships    : {counts.get('memberships_seen', 0):,}")
cpu = float(field('User time')) + float(field('System time'))
seen = counts.get('profiles_seen', 0)
print(f"wall           : {field('Elapsed')}  (user {field('User time')} s, system {field('System time')} s)")
print(f"CPU            : {cpu:.1f} s, {cpu / max(seen, 1) * 1e6:.0f} µs per profile (the command and the children it waited for: not the helper processes, whose forkserver outlives it)")
print(f"peak RSS       : {int(field('Maximum resident set size')) / 1024:.1f} MiB (the largest process)")
EOF
