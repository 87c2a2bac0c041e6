#!/usr/bin/env bash
# Install everything tracetags needs from nothing: redis-server (apt) and the venv.
# Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "bootstrap: installing redis-server with apt-get" >&2
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
  # Debian's package starts a service on 6379; tracetags starts its own servers.
fi

PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tracetags needs Python >= 3.11")'

if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv" >&2
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
.venv/bin/python -m pip install -q -e ".[test,dev]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
.venv/bin/python -c "import tracetags, faststream, redis, msgspec, typer, rich, pytest"

# MLflow 3.17.2, the reference for query behaviour, lives in a venv of its own (the
# differential tests and the query benchmark drive it as a subprocess). Skip it with
# TRACETAGS_SKIP_MLFLOW=1 when only running the service.
if [ "${TRACETAGS_SKIP_MLFLOW:-0}" != "1" ] && [ ! -x .mlflow-venv/bin/python ]; then
  echo "bootstrap: creating .mlflow-venv with mlflow==3.17.2 (about a minute)" >&2
  "$PYTHON" -m venv .mlflow-venv
  .mlflow-venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
  .mlflow-venv/bin/python -m pip install -q "mlflow==3.17.2" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  .mlflow-venv/bin/python -c "import mlflow; assert mlflow.__version__ == '3.17.2', mlflow.__version__"
fi
