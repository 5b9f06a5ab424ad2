# Sourced by scripts/test and .ci/run: starts Debian's redis-server (installed by scripts/setup) on a free
# loopback port for the tests that share one Redis, exports BBSSO_TEST_REDIS_URL, and stops it when the calling
# shell exits. Does nothing when BBSSO_TEST_REDIS_URL is already set. Tests that stop and restart Redis start
# their own server.
if [ -z "${BBSSO_TEST_REDIS_URL:-}" ]; then
  command -v redis-server >/dev/null 2>&1 || { echo "redis-server is missing: run bash scripts/setup" >&2; exit 1; }
  bbsso_redis_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  bbsso_redis_dir=$(mktemp -d)
  redis-server --bind 127.0.0.1 --port "$bbsso_redis_port" --save "" --appendonly no \
    --dir "$bbsso_redis_dir" --daemonize yes --pidfile "$bbsso_redis_dir/redis.pid" \
    --logfile "$bbsso_redis_dir/redis.log"
  trap 'kill "$(cat "$bbsso_redis_dir/redis.pid" 2>/dev/null)" 2>/dev/null; rm -rf "$bbsso_redis_dir"' EXIT
  for _ in $(seq 100); do
    redis-cli -p "$bbsso_redis_port" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
  done
  redis-cli -p "$bbsso_redis_port" ping | grep -q PONG || { echo "redis-server did not start" >&2; exit 1; }
  export BBSSO_TEST_REDIS_URL="redis://127.0.0.1:$bbsso_redis_port"
  echo "test Redis at $BBSSO_TEST_REDIS_URL"
fi
