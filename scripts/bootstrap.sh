#!/usr/bin/env bash
# Install everything the relay needs on a Debian 12 machine, idempotently:
# Debian packages (unixODBC + psqlODBC, PostgreSQL 15, OpenJDK, BeanShell,
# Rhino, JT400, libsystemd headers for systemd-python), then the Python venv.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools for building and booting the disk image (`make image`, issue #7);
# only `scripts/bootstrap.sh image-tools` installs them, never the default run.
image_tools() {
  local tools=(
    debootstrap systemd-container fdisk dosfstools mtools e2fsprogs
    systemd-boot sbsigntool ovmf qemu-system-x86 qemu-utils
  )
  local need=()
  for p in "${tools[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
      || need+=("$p")
  done
  ((${#need[@]})) || return 0
  echo "bootstrap: installing image tools: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 \
    install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}
if [ "${1:-}" = image-tools ]; then
  image_tools
  exit 0
fi

packages=(
  unixodbc odbc-postgresql postgresql-15 default-jre-headless maven
  libbsh-java librhino-java libjt400-java libsystemd-dev pkg-config
  chromium
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # Wait for another apt run (unattended upgrades, a parallel make) instead
  # of failing on the dpkg lock.
  lock=(-o DPkg::Lock::Timeout=600)
  $SUDO apt-get "${lock[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get "${lock[@]}" install -y -qq \
    "${missing[@]}" >/dev/null
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
