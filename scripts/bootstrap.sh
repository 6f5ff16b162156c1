#!/usr/bin/env bash
# Install everything the relay needs on a Debian 12 machine, idempotently:
# Debian packages (unixODBC + psqlODBC, PostgreSQL 15, OpenJDK, BeanShell,
# Rhino, JT400, libsystemd headers for systemd-python), then the Python venv.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  unixodbc odbc-postgresql postgresql-15 default-jre-headless maven
  libbsh-java librhino-java libjt400-java libsystemd-dev pkg-config
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing the package and its dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev,systemd]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
