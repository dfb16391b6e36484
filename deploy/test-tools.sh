#!/usr/bin/env bash
# Installs the command-line checkers some tests run on our configuration files:
#   promtool  (Debian package prometheus)  Prometheus config and alert rules
#   caddy     (Debian package caddy)       the TLS profile's Caddyfile
#   initdb    (Debian package postgresql)  a private PostgreSQL server that
#             tests/integration/test_postgres_restart.py restarts (the shared
#             one may be elsewhere: DARKROOM_TEST_POSTGRES_URL)
#   chromium  (Debian package chromium)    the console's browser tests (tests/e2e/console,
#                                          Playwright drives /usr/bin/chromium)
# and, when named, the benchmarks' load generator:
#   wrk       (Debian package wrk)         bench/read_path.py (make bench)
#
#   deploy/test-tools.sh            promtool, caddy, initdb and chromium
#   deploy/test-tools.sh wrk        the tools named
#
# A tool already on PATH is left alone (a run where all is there takes no
# time). A missing one is installed with apt-get when this runs as root (CI, a
# fresh container); otherwise the command to run is printed. Exit 1 when a tool
# is still missing: with CI=true the tests that need it fail instead of skipping.
set -uo pipefail

declare -A PACKAGE=([promtool]=prometheus [caddy]=caddy [wrk]=wrk [initdb]=postgresql
                    [chromium]=chromium)
tools=("$@")
[ "${#tools[@]}" -eq 0 ] && tools=(promtool caddy initdb chromium)
# Debian keeps PostgreSQL's server programs off PATH, under /usr/lib/postgresql/<version>/bin
have() {
  command -v "$1" >/dev/null 2>&1 ||
    { [ "$1" = initdb ] && compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }
}
missing=()
for tool in "${tools[@]}"; do
  have "$tool" || missing+=("${PACKAGE[$tool]}")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test-tools: installing ${missing[*]} (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Only the tools: packages must not start their daemons here.
  policy=/usr/sbin/policy-rc.d; made_policy=
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; made_policy=1; fi
  { apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 &&
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; }; }
  status=$?
  [ -n "$made_policy" ] && rm -f "$policy"
  [ "$status" -eq 0 ] && exit 0
  echo "test-tools: apt-get install ${missing[*]} failed" >&2
  exit 1
fi
echo "test-tools: missing ${missing[*]}: run 'sudo apt-get install ${missing[*]}'" \
     "(the tests that use them skip, or fail with CI=true)" >&2
exit 1
