#!/usr/bin/env bash
# Brings up the local servers that `make dev`, `make test` and `make bench` need:
#   rabbitmq  RabbitMQ on 127.0.0.1:5672 with its management plugin (API on :15672)
#   postgres  PostgreSQL on 127.0.0.1:5432
#   redis     Redis on 127.0.0.1:6379
#
#   deploy/local-services.sh [rabbitmq] [postgres] [redis]    (no argument: all three)
#
# A server that answers is left alone: nothing is ever stopped or restarted, so a
# run where everything is up only probes (well under a second). A server that is
# installed but stopped is started; the management plugin is enabled on the
# running broker. A server that the tests take from the environment
# (DARKROOM_TEST_AMQP_URI, DARKROOM_TEST_POSTGRES_URL, DARKROOM_TEST_REDIS_URL) is
# not touched. Exit 1, with a message saying what to install, when a server is
# missing; it is never silently skipped.
set -uo pipefail

failed=0
say() { echo "local-services: $*" >&2; }
installed() { command -v "$1" >/dev/null 2>&1; }

wait_for() {  # wait_for <what> <seconds> <command...> (LOCAL_SERVICES_TIMEOUT: instead of <seconds>)
  local what=$1 seconds=${LOCAL_SERVICES_TIMEOUT:-$2}; shift 2
  for _ in $(seq "$seconds"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  say "$what did not come up within ${seconds}s"
  return 1
}

missing() {  # missing <what does not answer> <what to install>
  say "$1, and it is not installed here: install $2 (or point the" \
      "DARKROOM_TEST_* variables at a server, README \"Tests\")"
  failed=1
}

management_up() {
  curl -fsS -o /dev/null -u guest:guest http://127.0.0.1:15672/api/overview
}

rabbitmq() {
  if [ -n "${DARKROOM_TEST_AMQP_URI:-}" ] || management_up >/dev/null 2>&1; then
    return 0
  fi
  if ! installed rabbitmq-diagnostics || ! installed rabbitmq-plugins; then
    missing "RabbitMQ's management API does not answer on 127.0.0.1:15672" \
      "rabbitmq-server (e.g. apt-get install rabbitmq-server)"
    return
  fi
  if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
    say "starting RabbitMQ"
    rabbitmq-server -detached >/dev/null 2>&1 &&
      wait_for RabbitMQ 90 rabbitmq-diagnostics -q ping || { failed=1; return; }
  fi
  say "enabling the RabbitMQ management plugin"
  rabbitmq-plugins enable --quiet rabbitmq_management >/dev/null &&
    wait_for "the RabbitMQ management API" 60 management_up || failed=1
}

postgres_up() { pg_isready -q -h 127.0.0.1 -p 5432; }

postgres() {
  [ -n "${DARKROOM_TEST_POSTGRES_URL:-}" ] && return 0
  if ! installed pg_isready; then
    missing "PostgreSQL is not checked on 127.0.0.1:5432 (no pg_isready)" \
      "postgresql (e.g. apt-get install postgresql)"
    return
  fi
  postgres_up >/dev/null 2>&1 && return 0
  if installed pg_lsclusters && installed pg_ctlcluster; then
    # Debian's clusters: "version name port status owner data-directory log-file"
    local version name
    while read -r version name _; do
      say "starting PostgreSQL $version/$name"
      pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start >/dev/null 2>&1
    done < <(pg_lsclusters --no-header 2>/dev/null | awk '$4 !~ /^online/')
  elif installed pg_ctl && [ -n "${PGDATA:-}" ]; then
    say "starting PostgreSQL ($PGDATA)"
    pg_ctl -D "$PGDATA" -l "$PGDATA/local-services.log" start >/dev/null 2>&1
  else
    say "PostgreSQL is installed but stopped, and there is no cluster to start" \
        "(pg_lsclusters, or PGDATA for pg_ctl): start it yourself"
    failed=1
    return
  fi
  wait_for PostgreSQL 60 postgres_up || failed=1
}

redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; }

redis() {
  [ -n "${DARKROOM_TEST_REDIS_URL:-}" ] && return 0
  if installed redis-cli && redis_up; then
    return 0
  fi
  if ! installed redis-cli || ! installed redis-server; then
    missing "Redis does not answer on 127.0.0.1:6379" \
      "redis-server (e.g. apt-get install redis-server)"
    return
  fi
  say "starting Redis"
  # A scratch server: no persistence, its log in the temporary directory.
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "${TMPDIR:-/tmp}" --logfile "${TMPDIR:-/tmp}/darkroom-redis.log" >/dev/null 2>&1 &&
    wait_for Redis 30 redis_up || failed=1
}

[ "$#" -gt 0 ] || set -- rabbitmq postgres redis
for server in "$@"; do
  case "$server" in
    rabbitmq|postgres|redis) "$server" ;;
    *) say "unknown server '$server' (rabbitmq, postgres or redis)"; exit 2 ;;
  esac
done
exit "$failed"
