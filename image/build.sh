#!/usr/bin/env bash
# Build the store NUC's disk image: a GPT disk for x86-64 UEFI, Secure Boot
# signed, from Debian packages. Nothing here mounts a filesystem image (the
# build host has no vfat and no device-mapper, platform-notes §0/§1.2):
#
#   lock    resolve the Python dependencies once into image/requirements.lock
#   wheels  the project's wheel + the locked wheelhouse (hashes checked)
#   tree    debootstrap minbase, Debian packages, the venv, units, hardening
#   disk    ext4 root (mkfs.ext4 -d), ESP (mkfs.vfat + mtools), GPT (sfdisk)
#   all     wheels + tree + disk (what `make image` runs)
#
# Outputs under $IMAGE_OUT (default .cache/image, git-ignored):
#   tree/  appliance.raw  appliance-unsigned.raw  vmlinuz  initrd.img  build.log
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
# shellcheck source=image/image.conf
source image/image.conf
OUT=${IMAGE_OUT:-$REPO/.cache/image}
TREE=$OUT/tree
WHEELS=$OUT/wheelhouse
mkdir -p "$OUT"

log() { printf '%s image: %s\n' "$(date +%T)" "$*" >&2; }

# --- lock / wheels ---------------------------------------------------------

lock() {
  # One resolution against PyPI, recorded with hashes; later builds install
  # exactly these files and nothing else.
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  .venv/bin/pip wheel -q --wheel-dir "$WHEELS" .
  {
    echo "# Runtime dependencies of the appliance, as built into the image."
    echo "# Regenerate with: image/build.sh lock"
    for whl in "$WHEELS"/*.whl; do
      name=$(basename "$whl" | cut -d- -f1)
      version=$(basename "$whl" | cut -d- -f2)
      [ "$name" = store_relay_appliance ] && continue
      echo "$name==$version --hash=sha256:$(sha256sum "$whl" | cut -d' ' -f1)"
    done
  } >image/requirements.lock
  log "locked $(grep -c == image/requirements.lock) packages"
}

wheels() {
  [ -f image/requirements.lock ] || lock
  mkdir -p "$WHEELS"
  rm -f "$WHEELS"/store_relay_appliance-*.whl
  .venv/bin/pip wheel -q --no-deps --wheel-dir "$WHEELS" .
  # Files already in the wheelhouse are checked against their hash, not
  # fetched again.
  .venv/bin/pip download -q --no-deps --require-hashes --dest "$WHEELS" \
    -r image/requirements.lock
}

# --- tree ------------------------------------------------------------------

# Debian packages of the NUC. No compiler, no -dev package: the build tools
# never reach the image.
PACKAGES=(
  # boot and base system
  linux-image-amd64 initramfs-tools systemd systemd-sysv udev dbus
  systemd-timesyncd ca-certificates openssl procps less netbase
  # TPM2-bound credentials (systemd-creds --with-key=tpm2)
  libtss2-esys-3.0.2-0 libtss2-mu0 libtss2-rc0
  # hardening
  openssh-server nftables auditd
  # the relay: Debian's Python, the JVM with the script engines, ODBC
  python3 python3-venv python3-systemd
  openjdk-17-jre-headless libbsh-java librhino-java libjt400-java
  unixodbc libodbc2
)

in_tree() { chroot "$TREE" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"; }

mount_api() {
  mount --bind /proc "$TREE/proc"
  mount --bind /sys "$TREE/sys"
  mount --bind /dev "$TREE/dev"
  mount --bind /dev/pts "$TREE/dev/pts"
}

umount_api() {
  for m in dev/pts dev sys proc; do
    mountpoint -q "$TREE/$m" && umount -l "$TREE/$m"
  done
  return 0
}

tree() {
  if [ ! -f "$OUT/base.done" ]; then
    rm -rf "$TREE"
    log "debootstrap $IMAGE_SUITE from $IMAGE_MIRROR"
    debootstrap --variant=minbase "$IMAGE_SUITE" "$TREE" "$IMAGE_MIRROR" \
      >"$OUT/debootstrap.log"
    touch "$OUT/base.done"
  fi
  trap umount_api EXIT
  mount_api
  cat >"$TREE/etc/apt/sources.list" <<EOF
deb $IMAGE_MIRROR $IMAGE_SUITE main
deb $IMAGE_MIRROR $IMAGE_SUITE-updates main
deb $IMAGE_SECURITY_MIRROR $IMAGE_SUITE-security main
EOF
  cp /etc/resolv.conf "$TREE/etc/resolv.conf"
  # No daemon may start inside the build chroot.
  printf '#!/bin/sh\nexit 101\n' >"$TREE/usr/sbin/policy-rc.d"
  chmod 755 "$TREE/usr/sbin/policy-rc.d"

  log "installing ${#PACKAGES[@]} Debian packages"
  in_tree apt-get -qq update
  in_tree apt-get -qq install -y --no-install-recommends "${PACKAGES[@]}" \
    >"$OUT/apt.log"
  # IBM's ODBC driver is not in Debian: drop its .deb into image/vendor/.
  if compgen -G "image/vendor/*.deb" >/dev/null; then
    cp image/vendor/*.deb "$TREE/tmp/"
    in_tree sh -c 'apt-get -qq install -y /tmp/*.deb && rm -f /tmp/*.deb'
  fi

  venv
  configure
  in_tree apt-get -qq clean
  rm -f "$TREE/usr/sbin/policy-rc.d" "$TREE/etc/resolv.conf"
  umount_api
  trap - EXIT
  log "tree ready: $(du -sh "$TREE" | cut -f1)"
}

venv() {
  log "installing the appliance into /opt/appliance/venv"
  rm -rf "$TREE/opt/appliance" "$TREE/tmp/wheelhouse"
  cp -r "$WHEELS" "$TREE/tmp/wheelhouse"
  cp image/requirements.lock "$TREE/tmp/wheelhouse/"
  # --system-site-packages for Debian's python3-systemd only (no compiler in
  # the image); every other module comes from the locked wheelhouse.
  in_tree python3 -m venv --system-site-packages /opt/appliance/venv
  in_tree /opt/appliance/venv/bin/pip install -q --no-index --find-links /tmp/wheelhouse --no-cache-dir \
    --require-hashes -r /tmp/wheelhouse/requirements.lock
  in_tree sh -c '/opt/appliance/venv/bin/pip install -q --no-index \
    --no-cache-dir --no-deps /tmp/wheelhouse/store_relay_appliance-*.whl'
  rm -rf "$TREE/tmp/wheelhouse"
  mkdir -p "$TREE/opt/appliance/docs" "$TREE/opt/appliance/scripts"
  cp README.md "$TREE/opt/appliance/"
  cp docs/*.md "$TREE/opt/appliance/docs/"
  cp config/scripts/* "$TREE/opt/appliance/scripts/"
}

configure() {
  log "configuring units and hardening"
  cp -r image/overlay/. "$TREE/"
  chmod 0755 "$TREE"/usr/local/sbin/*
  for unit in systemd/*.service systemd/*.target; do
    install -m 0644 "$unit" "$TREE/etc/systemd/system/"
  done
  # The hub sink runs beside the ODH, never on a store box.
  rm -f "$TREE/etc/systemd/system/appliance-sink.service"
  install -m 0644 systemd/appliance.sysusers "$TREE/usr/lib/sysusers.d/appliance.conf"
  install -m 0644 systemd/appliance.tmpfiles "$TREE/usr/lib/tmpfiles.d/appliance.conf"
  in_tree systemd-sysusers
  in_tree systemd-tmpfiles --create /usr/lib/tmpfiles.d/appliance.conf || true

  render_firewall >"$TREE/etc/nftables.conf"
  in_tree chown root:appliance /etc/appliance/appliance.toml
  in_tree chmod 0640 /etc/appliance/appliance.toml

  # Logins: root locked (no password works anywhere), SSH keys only.
  in_tree usermod --lock --expiredate '' root
  in_tree passwd --delete --lock root >/dev/null 2>&1 || true
  install -d -m 0700 "$TREE/root/.ssh"
  printf '%s\n' "$IMAGE_AUTHORIZED_KEYS" | sed '/^$/d' >"$TREE/root/.ssh/authorized_keys"
  chmod 0600 "$TREE/root/.ssh/authorized_keys"

  # First boot makes this NUC's own identity: machine id, SSH host keys,
  # credential host key, web UI certificate (appliance-firstboot.service).
  rm -f "$TREE"/etc/ssh/ssh_host_*
  : >"$TREE/etc/machine-id"
  rm -f "$TREE/var/lib/dbus/machine-id" "$TREE/var/lib/systemd/credential.secret"
  echo appliance >"$TREE/etc/hostname"

  # Presets decide what first boot enables (Debian's policy would enable
  # everything with an [Install] section, platform-notes §2.1).
  in_tree systemctl preset-all 2>/dev/null
  in_tree systemctl enable appliance.target appliance-firstboot.service \
    systemd-networkd.service nftables.service auditd.service ssh.service \
    systemd-timesyncd.service 2>/dev/null
  in_tree systemctl set-default multi-user.target

  # The kernel and initrd go to the ESP; the command line keeps auditing on.
  cp "$TREE"/boot/vmlinuz-* "$OUT/vmlinuz"
  cp "$TREE"/boot/initrd.img-* "$OUT/initrd.img"
}

render_firewall() {
  local kafka_set ibmi=$IMAGE_IBMI_HOST
  kafka_set=$(printf '%s\n' $IMAGE_KAFKA_BROKERS | sed 's/:/ . /' | paste -sd, -)
  sed -e "s|@STORE_NET@|$IMAGE_STORE_NET|g" -e "s|@MGMT_NET@|$IMAGE_MGMT_NET|g" \
    -e "s|@WEBUI_PORT@|$IMAGE_WEBUI_PORT|g" -e "s|@IBMI_HOST@|$ibmi|g" \
    -e "s|@KAFKA_BROKERS@|$kafka_set|g" image/nftables.conf.in
}

# --- disk ------------------------------------------------------------------

ESP_TYPE=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
ROOT_TYPE=4F68BCE3-E8CD-4C31-9653-A5F9F5F2D6E2 # x86-64 root (Discoverable)
CMDLINE="root=LABEL=root rw console=tty0 console=ttyS0,115200 audit=1 \
audit_backlog_limit=8192 lockdown=integrity quiet"

disk() {
  local work=$OUT/work
  rm -rf "$work" && mkdir -p "$work"
  log "root filesystem (ext4, ${IMAGE_ROOT_MIB} MiB)"
  mkfs.ext4 -q -L root -U random -E root_owner=0:0 -d "$TREE" \
    "$work/root.img" "${IMAGE_ROOT_MIB}M"

  log "ESP (vfat via mtools) and GPT, signed and unsigned"
  signed_efi "$work"
  esp "$work/esp-signed.img" "$work/signed"
  esp "$work/esp-unsigned.img" "$work/unsigned"
  gpt "$work/esp-signed.img" "$work/root.img" "$OUT/appliance.raw"
  gpt "$work/esp-unsigned.img" "$work/root.img" "$OUT/appliance-unsigned.raw"
  rm -rf "$work"
  log "disk: $(du -h --apparent-size "$OUT/appliance.raw" | cut -f1) apparent," \
    "$(du -h "$OUT/appliance.raw" | cut -f1) allocated"
}

signed_efi() {
  local work=$1
  mkdir -p "$work/signed" "$work/unsigned"
  cp /usr/lib/systemd/boot/efi/systemd-bootx64.efi "$work/unsigned/BOOTX64.EFI"
  # Debian signs its kernel with its own key; ours replaces it.
  sbattach --remove "$OUT/vmlinuz" 2>/dev/null || true
  cp "$OUT/vmlinuz" "$work/unsigned/vmlinuz"
  local key=$work/sb.key
  openssl rsa -in "$IMAGE_SB_KEY" -passin "pass:$IMAGE_SB_PASS" -out "$key" 2>/dev/null
  for f in BOOTX64.EFI vmlinuz; do
    sbsign --key "$key" --cert "$IMAGE_SB_CERT" --output "$work/signed/$f" \
      "$work/unsigned/$f" 2>/dev/null
    sbverify --cert "$IMAGE_SB_CERT" "$work/signed/$f" >/dev/null
  done
  rm -f "$key"
}

esp() {
  local img=$1 bins=$2
  export MTOOLS_SKIP_CHECK=1
  mkfs.vfat -F 32 -n ESP -C "$img" $((IMAGE_ESP_MIB * 1024)) >/dev/null
  mmd -i "$img" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries ::/appliance
  mcopy -i "$img" "$bins/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
  mcopy -i "$img" "$bins/vmlinuz" ::/appliance/vmlinuz
  mcopy -i "$img" "$OUT/initrd.img" ::/appliance/initrd.img
  printf 'timeout 0\ndefault appliance.conf\neditor no\n' >"$OUT/loader.conf"
  printf 'title Store relay appliance\nlinux /appliance/vmlinuz\n%s\noptions %s\n' \
    "initrd /appliance/initrd.img" "$CMDLINE" >"$OUT/entry.conf"
  mcopy -i "$img" "$OUT/loader.conf" ::/loader/loader.conf
  mcopy -i "$img" "$OUT/entry.conf" ::/loader/entries/appliance.conf
  rm -f "$OUT/loader.conf" "$OUT/entry.conf"
}

gpt() {
  local esp_img=$1 root_img=$2 raw=$3
  local esp_mib=$IMAGE_ESP_MIB root_mib=$IMAGE_ROOT_MIB
  rm -f "$raw"
  truncate -s $((1 + esp_mib + root_mib + 1))M "$raw"
  sfdisk -q "$raw" <<EOF
label: gpt
start=1MiB, size=${esp_mib}MiB, type=$ESP_TYPE, name=esp
start=$((1 + esp_mib))MiB, size=${root_mib}MiB, type=$ROOT_TYPE, name=root
EOF
  dd if="$esp_img" of="$raw" bs=1M seek=1 conv=notrunc,sparse status=none
  dd if="$root_img" of="$raw" bs=1M seek=$((1 + esp_mib)) conv=notrunc,sparse \
    status=none
}

case ${1:-all} in
  lock) lock ;;
  wheels) wheels ;;
  tree) tree ;;
  disk) disk ;;
  all)
    started=$(date +%s)
    wheels
    tree
    disk
    log "built in $(($(date +%s) - started)) s"
    ;;
  *) echo "usage: $0 [lock|wheels|tree|disk|all]" >&2 && exit 2 ;;
esac
