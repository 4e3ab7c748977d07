#!/usr/bin/env bash
# Start an MLflow tracking server for mempack runs.
#
#   cluster/mlflow/start_server.sh                       # local: sqlite + ./outputs/mlflow-server, 127.0.0.1:5000
#   MLFLOW_HOST=0.0.0.0 \
#   MLFLOW_BACKEND_STORE_URI=postgresql://mlflow:PASSWORD@db-host:5432/mlflow \
#   MLFLOW_ARTIFACTS_DESTINATION=s3://my-bucket/mlflow \
#   MLFLOW_ALLOWED_HOSTS='mlflow-host,mlflow-host:*,10.*' cluster/mlflow/start_server.sh   # shared server
#
# Pipelines log to it with --mlflow-uri http://HOST:5000. Artifacts are proxied through the server
# (--artifacts-destination), so clients need no S3 credentials; the server does.
set -euo pipefail
cd "$(dirname "$0")/../.."

HOST=${MLFLOW_HOST:-127.0.0.1}
PORT=${MLFLOW_PORT:-5000}
DATA=${MLFLOW_DATA_DIR:-$PWD/outputs/mlflow-server}
BACKEND=${MLFLOW_BACKEND_STORE_URI:-sqlite:///$DATA/mlflow.db}
ARTIFACTS=${MLFLOW_ARTIFACTS_DESTINATION:-$DATA/artifacts}
WORKERS=${MLFLOW_WORKERS:-4}

if [ -x .venv/bin/mlflow ] && [ -z "${MLFLOW_BIN:-}" ]; then
  MLFLOW_BIN=.venv/bin/mlflow
fi
MLFLOW_BIN=${MLFLOW_BIN:-mlflow}

case "$BACKEND" in sqlite:*) mkdir -p "$DATA" ;; esac
case "$ARTIFACTS" in *://*) ;; *) mkdir -p "$ARTIFACTS" ;; esac

args=(server
  --backend-store-uri "$BACKEND"
  --artifacts-destination "$ARTIFACTS"
  --host "$HOST"
  --port "$PORT"
  --workers "$WORKERS")
# Host headers other than localhost / private IPs (e.g. a DNS name) must be allowed explicitly.
if [ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]; then
  args+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
fi

echo "mlflow: backend $BACKEND | artifacts $ARTIFACTS | http://$HOST:$PORT"
exec "$MLFLOW_BIN" "${args[@]}" "$@"
