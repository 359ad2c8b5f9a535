#!/usr/bin/env bash
# The production MLflow tracking server for adaptune: PostgreSQL backend store, proxied artifacts, and MLflow's
# basic-auth app with an admin password you choose, bound to 127.0.0.1 only (other machines reach it through a
# TLS reverse proxy or an SSH tunnel in front of it, never directly):
#
#   export MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://mlflow@127.0.0.1:5432/mlflow  # no password in it
#   export PGPASSWORD=...                      # the database password, if PostgreSQL asks for one (or ~/.pgpass)
#   export MLFLOW_AUTH_ADMIN_PASSWORD=...      # at least 12 characters; from your secret store, never a file
#   scripts/mlflow-server.sh --port 5000 --artifacts-destination /srv/mlflow/artifacts
#
# Clients (adaptune, the MLflow UI's users) then log in: MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
#
# Environment:
#   MLFLOW_BACKEND_STORE_URI        required: postgresql://... or postgresql+psycopg2://..., without a password
#   MLFLOW_AUTH_ADMIN_PASSWORD      required: the admin's password on first start (MLflow's own old default
#                                   "password1234" and anything shorter than 12 characters are refused). MLflow
#                                   reads it from the environment; it is written to no file. Once the admin
#                                   exists, change it with MLflow's update-password API, not here.
#   MLFLOW_AUTH_ADMIN_USERNAME      the admin user (default: admin)
#   MLFLOW_AUTH_DATABASE_URI        where users and permissions live (default: the backend store's database;
#                                   MLflow keeps them in tables of their own)
#   MLFLOW_AUTH_DEFAULT_PERMISSION  what a signed-in user may do with experiments and models nobody granted them:
#                                   READ (default), NO_PERMISSIONS, EDIT or MANAGE
#   MLFLOW_FLASK_SERVER_SECRET_KEY  the auth app's CSRF key (default: a random one for this start)
#   ADAPTUNE_MLFLOW_STATE           folder for the generated auth config (default: ~/.adaptune/mlflow-server)
# Options: --port N (5000), --artifacts-destination DIR (./mlartifacts), --workers N (4); arguments after `--` go
# to `mlflow server` as they are (e.g. --allowed-hosts mlflow.example.com for the proxy's host name). The script
# execs the server, so its process id is the server's.
set -euo pipefail

die() {
  echo "mlflow-server.sh: $*" >&2
  exit 2
}

port=5000
artifacts=./mlartifacts
workers=4
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port=${2:?--port needs a value}; shift 2 ;;
    --artifacts-destination) artifacts=${2:?--artifacts-destination needs a value}; shift 2 ;;
    --workers) workers=${2:?--workers needs a value}; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h | --help) sed -n '2,30p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
for arg in "${extra[@]+"${extra[@]}"}"; do
  case "$arg" in
    --host | --host=* | -h | --app-name | --app-name=* | --backend-store-uri* | --dev | --disable-security-middleware)
      die "$arg would undo what this recipe guarantees (127.0.0.1, basic auth, PostgreSQL, security middleware)" ;;
  esac
done

# --- the backend store: PostgreSQL, its password never in the URI (the URI shows up in process lists) ---
backend=${MLFLOW_BACKEND_STORE_URI:-}
[ -n "$backend" ] || die "MLFLOW_BACKEND_STORE_URI is not set. Set it to the PostgreSQL database, e.g. postgresql+psycopg2://mlflow@127.0.0.1:5432/mlflow"
case "$backend" in
  postgresql://* | postgresql+*://*) ;;
  *) die "MLFLOW_BACKEND_STORE_URI must be a PostgreSQL URI (got ${backend%%://*}://...). Use postgresql+psycopg2://USER@HOST:5432/DB" ;;
esac
auth_db=${MLFLOW_AUTH_DATABASE_URI:-$backend}
for uri in "$backend" "$auth_db"; do
  userinfo=${uri#*://}
  userinfo=${userinfo%%/*}
  case "$userinfo" in
    *:*@*) die "a database URI carries a password (${uri%%://*}://${userinfo%%:*}:***@...). Remove it and set PGPASSWORD or ~/.pgpass instead" ;;
  esac
done

# --- the admin password: set, not MLflow's old default, long enough for MLflow's password policy ---
password=${MLFLOW_AUTH_ADMIN_PASSWORD:-}
[ -n "$password" ] || die "MLFLOW_AUTH_ADMIN_PASSWORD is not set. Set it to a new password of 12 or more characters (from your secret store)"
[ "$password" != "password1234" ] || die "MLFLOW_AUTH_ADMIN_PASSWORD is MLflow's publicly known old default password1234. Choose another"
[ "${#password}" -ge 12 ] || die "MLFLOW_AUTH_ADMIN_PASSWORD has ${#password} characters; MLflow needs at least 12. Choose a longer one"

permission=${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
case "$permission" in
  READ | NO_PERMISSIONS | EDIT | MANAGE) ;;
  *) die "MLFLOW_AUTH_DEFAULT_PERMISSION must be READ, NO_PERMISSIONS, EDIT or MANAGE (got $permission)" ;;
esac
command -v mlflow >/dev/null || die "mlflow is not on PATH. Install it with its auth extra: pip install 'mlflow[auth]' psycopg2-binary"

# --- the auth app's config: no secret in it, still readable by this user only ---
state=${ADAPTUNE_MLFLOW_STATE:-$HOME/.adaptune/mlflow-server}
umask 077
mkdir -p "$state"
config="$state/basic_auth.ini"
cat >"$config" <<EOF
[mlflow]
default_permission = $permission
database_uri = $auth_db
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
EOF
export MLFLOW_AUTH_CONFIG_PATH="$config"
export MLFLOW_AUTH_ADMIN_PASSWORD="$password"
if [ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]; then
  MLFLOW_FLASK_SERVER_SECRET_KEY=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
fi
export MLFLOW_FLASK_SERVER_SECRET_KEY
export MLFLOW_BACKEND_STORE_URI="$backend" # read by `mlflow server` from here, so it is not on the command line
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true

mkdir -p "$artifacts"
exec mlflow server \
  --app-name basic-auth \
  --host 127.0.0.1 \
  --port "$port" \
  --workers "$workers" \
  --serve-artifacts \
  --artifacts-destination "$artifacts" \
  "${extra[@]+"${extra[@]}"}"
