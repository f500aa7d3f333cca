#!/bin/sh
# Runs once, when the PostgreSQL container creates its cluster (docker-entrypoint-initdb.d):
# the owner of the pochta database (pochtactl migrate and administration) and one login role
# per service, none of them superuser. `pochtactl migrate --grant-roles` then gives each
# service role exactly the privileges it needs. Passwords come from the environment and are
# passed to psql as variables, never spliced into SQL text.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v owner_pw="$POCHTA_DB_PASSWORD" \
    -v ingress_pw="$POCHTA_INGRESS_DB_PASSWORD" \
    -v queue_pw="$POCHTA_QUEUE_DB_PASSWORD" \
    -v pop3_pw="$POCHTA_POP3_DB_PASSWORD" \
    -v imap_pw="$POCHTA_IMAP_DB_PASSWORD" <<'SQL'
CREATE ROLE pochta LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'owner_pw';
CREATE ROLE pochta_ingress LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'ingress_pw';
CREATE ROLE pochta_queue LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'queue_pw';
CREATE ROLE pochta_pop3 LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'pop3_pw';
CREATE ROLE pochta_imap LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'imap_pw';
CREATE DATABASE pochta OWNER pochta;
-- Only the roles named here may connect.
REVOKE CONNECT, TEMPORARY ON DATABASE pochta FROM PUBLIC;
GRANT CONNECT ON DATABASE pochta TO pochta, pochta_ingress, pochta_queue, pochta_pop3,
    pochta_imap;
SQL
