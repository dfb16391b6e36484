#!/bin/sh
# First start of the PostgreSQL container: one database and one role per service.
# Passwords come from the environment the compose file passes in.
set -eu

create() {
  name=$1 password=$2
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
CREATE ROLE ${name} LOGIN PASSWORD '${password}';
CREATE DATABASE ${name} OWNER ${name};
REVOKE ALL ON DATABASE ${name} FROM PUBLIC;
SQL
}

create auth "$AUTH_DB_PASSWORD"
create notifications "$NOTIFICATIONS_DB_PASSWORD"
create storage "$STORAGE_DB_PASSWORD"
