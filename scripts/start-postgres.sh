#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on 127.0.0.1 for the tests and print its URL.
# Usage: eval "$(scripts/start-postgres.sh)"   -> exports SMARTPUSH_TEST_POSTGRES_URL
# PGPORT_TEST picks the port; without it the server already running in the data directory
# keeps its port, and a new one gets a free port from the kernel (a fixed port fails when
# another server holds it). PGDATA_TEST picks the data directory.
set -euo pipefail
if [ -n "${PGPORT_TEST:-}" ]; then
  PORT="$PGPORT_TEST"
  DIR="${PGDATA_TEST:-/tmp/smartpush-pg-$PORT}"
else
  DIR="${PGDATA_TEST:-/tmp/smartpush-pg-$(id -u)}"
  PORT=""
  # line 4 of postmaster.pid is the port of the server running in DIR
  if [ -f "$DIR/postmaster.pid" ] && kill -0 "$(head -n1 "$DIR/postmaster.pid")" 2>/dev/null; then
    PORT="$(sed -n 4p "$DIR/postmaster.pid")"
  fi
  if [ -z "$PORT" ]; then
    PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  fi
fi
BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
if [ -z "$BIN" ] || [ ! -x "$BIN/initdb" ]; then
  echo "installing postgresql from Debian" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) >&2
  BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
fi
RUN_AS=()
if [ "$(id -u)" = "0" ]; then RUN_AS=(runuser -u postgres --); fi
if [ ! -f "$DIR/PG_VERSION" ]; then
  mkdir -p "$DIR"
  [ "$(id -u)" = "0" ] && chown postgres "$DIR"
  "${RUN_AS[@]}" "$BIN/initdb" -D "$DIR" -U postgres --auth=trust -E UTF8 >/dev/null
fi
if ! "${RUN_AS[@]}" "$BIN/pg_ctl" -D "$DIR" status >/dev/null 2>&1; then
  "${RUN_AS[@]}" "$BIN/pg_ctl" -D "$DIR" -l "$DIR/server.log" -w -t 60 \
    -o "-p $PORT -c listen_addresses=127.0.0.1 -k $DIR -c max_connections=200 -c fsync=off -c synchronous_commit=off" start >/dev/null
fi
echo "export SMARTPUSH_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
