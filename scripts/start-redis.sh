#!/usr/bin/env bash
# Start a throwaway Redis server (the job engine's scale-out queue) on 127.0.0.1, on a free
# port, for the tests, and print its URL.
# Usage: eval "$(scripts/start-redis.sh)"   -> exports SMARTPUSH_TEST_REDIS_URL
set -euo pipefail
if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server from Debian" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) >&2
fi
PORT="${REDIS_PORT_TEST:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
DIR="/tmp/smartpush-redis-$PORT"
mkdir -p "$DIR"
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$DIR" \
  --daemonize yes --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log" >/dev/null
for _ in $(seq 1 100); do
  if redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null | grep -q PONG; then
    echo "export SMARTPUSH_TEST_REDIS_URL=redis://127.0.0.1:$PORT/0"
    exit 0
  fi
  sleep 0.1
done
echo "redis-server did not start on port $PORT (see $DIR/redis.log)" >&2
exit 1
