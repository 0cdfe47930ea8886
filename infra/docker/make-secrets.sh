#!/bin/sh
# Write the secrets compose.yaml reads, each a fresh random value, into DIR (default: the
# git-ignored secrets/ beside this script). Refuses to overwrite: a second run would lock the
# servers out of the database and the users out of the servers. Run it once per stack:
#   infra/docker/make-secrets.sh            # then: docker compose -f infra/docker/compose.yaml up -d
# DIR is 0700 (no other user of the host reaches a file in it); the env files, read by compose on
# the host, are 0600; the two files mounted into containers that run as other users (MLflow's
# auth config, Prometheus's password for the Prefect API) are 0444 inside that folder.
set -eu
dir=${1:-$(dirname "$0")/secrets}
if [ -e "$dir/clients.env" ]; then
    echo "make-secrets: $dir already holds secrets; remove them first to start a new stack" >&2
    exit 1
fi
random() { od -An -tx1 -N24 /dev/urandom | tr -d ' \n'; }
db=$(random)
auth="admin:$(random)"
mlflow=$(random)
umask 077
mkdir -p "$dir"
chmod 700 "$dir"
pg="mlops:$db@postgres:5432"
printf 'POSTGRES_PASSWORD=%s\n' "$db" >"$dir/postgres.env"
printf 'PREFECT_SERVER_API_AUTH_STRING=%s\nPREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://%s/prefect\n' \
    "$auth" "$pg" >"$dir/prefect-server.env"
printf 'MLFLOW_AUTH_ADMIN_PASSWORD=%s\nMLFLOW_FLASK_SERVER_SECRET_KEY=%s\nMLFLOW_BACKEND_STORE_URI=postgresql+psycopg://%s/mlflow\n' \
    "$mlflow" "$(random)" "$pg" >"$dir/mlflow-server.env"
printf 'PREFECT_API_AUTH_STRING=%s\nMLFLOW_TRACKING_USERNAME=admin\nMLFLOW_TRACKING_PASSWORD=%s\n' \
    "$auth" "$mlflow" >"$dir/clients.env"
# MLflow's basic-auth app: its users beside its runs, in the mlflow database
cat >"$dir/mlflow-basic-auth.ini" <<INI
[mlflow]
# the admin alone is authorised; a user someone signs up gets no permission by default
default_permission = NO_PERMISSIONS
database_uri = postgresql+psycopg://$pg/mlflow
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 60
INI
# Prometheus's password for its scrapes of Prefect's /api/metrics (the auth string after admin:)
printf '%s' "${auth#admin:}" >"$dir/prefect-api.password"
chmod 444 "$dir/mlflow-basic-auth.ini" "$dir/prefect-api.password"
echo "make-secrets: wrote $dir (postgres.env, prefect-server.env, mlflow-server.env, clients.env, mlflow-basic-auth.ini, prefect-api.password)"
