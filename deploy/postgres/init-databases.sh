#!/bin/sh
# One database and one role per Darkroom service, each role owning only its own
# database and unable to connect to any other.
#
#   init-databases.sh auth notifications storage billing generation privacy
#
# For each name: the role (LOGIN; no CREATEDB or CREATEROLE, and like any role
# created this way no SUPERUSER, REPLICATION or BYPASSRLS) with the
# password in <NAME>_DB_PASSWORD, the database owned by it, and CONNECT on that
# database revoked from PUBLIC (the owner keeps it). PUBLIC's CONNECT on the
# maintenance database the script connects to (PGDATABASE, default postgres)
# is revoked too.
#
# Safe to run again, and compose does at every `up` (the postgres-init service):
# a service added later gets its database, and a password changed in deploy/.env
# is set on the role (the way to rotate it). Connection: libpq's PGHOST, PGPORT,
# PGUSER and PGPASSWORD, a superuser. Passwords never appear on a command line.
set -eu

if [ "$#" -eq 0 ]; then
  echo "usage: $0 SERVICE..." >&2
  exit 2
fi

export PGDATABASE="${PGDATABASE:-postgres}"

psql -v ON_ERROR_STOP=1 --quiet --no-psqlrc \
  -c "REVOKE CONNECT, TEMPORARY ON DATABASE \"$PGDATABASE\" FROM PUBLIC"

for name in "$@"; do
  case "$name" in
    ''|*[!a-z0-9_]*) echo "init-databases: bad service name '$name'" >&2; exit 2 ;;
  esac
  variable="$(printf '%s' "$name" | tr 'a-z' 'A-Z')_DB_PASSWORD"
  eval "password=\${$variable:-}"
  if [ -z "$password" ]; then
    echo "init-databases: $variable is not set" >&2
    exit 1
  fi
  # Variables, not string splicing: psql quotes :'password' as a literal and
  # :"name" as an identifier, so no password can break the statement.
  DARKROOM_DB_PASSWORD="$password" psql -v ON_ERROR_STOP=1 --quiet --no-psqlrc \
    -v name="$name" <<'SQL'
\getenv password DARKROOM_DB_PASSWORD
SELECT format('CREATE ROLE %I', :'name')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'name') \gexec
ALTER ROLE :"name" WITH LOGIN NOCREATEDB NOCREATEROLE PASSWORD :'password';
SELECT format('CREATE DATABASE %I OWNER %I', :'name', :'name')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'name') \gexec
ALTER DATABASE :"name" OWNER TO :"name";
REVOKE CONNECT, TEMPORARY ON DATABASE :"name" FROM PUBLIC;
SQL
  echo "init-databases: $name ready"
done
