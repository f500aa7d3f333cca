#!/bin/sh
# Runs once, when the PostgreSQL container creates its cluster (docker-entrypoint-initdb.d,
# after init-roles.sh): includes Pochta's settings (pochta.conf) in the cluster's
# configuration. The entrypoint restarts the server after its init scripts, so the
# settings, some of which only take effect at start (shared_buffers), apply from then on.
set -eu
cp "${POCHTA_PG_SETTINGS:-/etc/pochta/postgres.conf}" "$PGDATA/pochta.conf"
echo "include 'pochta.conf'" >> "$PGDATA/postgresql.conf"
