#!/usr/bin/env bash
# Build the store NUC's disk image: a GPT disk for x86-64 UEFI, Secure Boot
# signed, from Debian packages. Nothing here mounts a filesystem image (the
# build host has no vfat and no device-mapper, platform-notes §0/§1.2):
#
#   lock    resolve the Python dependencies once into image/requirements.lock
#   wheels  the project's wheel + the locked wheelhouse (hashes checked), as
#           the role's archive wheelhouse-<version>.tar with its own lock
#   tree    debootstrap minbase, Debian packages, then the Ansible role
#           `appliance` through the chroot connection (release venv, settings,
#           units: what a fleet box gets), then the image's own hardening
#   disk    ext4 root (mkfs.ext4 -d), ESP (mkfs.vfat + mtools), GPT (sfdisk)
#   all     wheels + tree + disk (what `make image` runs)
#
# Outputs under $IMAGE_OUT (default .cache/image, git-ignored):
#   tree/  appliance.raw  appliance-unsigned.raw  vmlinuz  initrd.img  build.log
#   wheelhouse-<version>.tar  ansible.log
#
# Needs the Ansible venv (ansible-core only) at $APPLIANCE_ANSIBLE_VENV
# (default .cache/ansible-venv; `make image` creates it).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
# shellcheck source=image/image.conf
source image/image.conf
OUT=${IMAGE_OUT:-$REPO/.cache/image}
TREE=$OUT/tree
WHEELS=$OUT/wheelhouse
ANSIBLE_VENV=${APPLIANCE_ANSIBLE_VENV:-$REPO/.cache/ansible-venv}
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
  # The role's archive holds exactly the locked files, each checked against
  # its hash: first offline from the files we already have (this wheelhouse,
  # the fleet test's cache), else fetched by hash (pip's cache first).
  local stage=$OUT/release-wheels cache=$REPO/.cache/ansible-test/deps
  rm -rf "$stage" && mkdir -p "$stage"
  if ! .venv/bin/pip download -q --no-deps --require-hashes --no-index \
    --find-links "$WHEELS" --find-links "$cache" --dest "$stage" \
    -r image/requirements.lock 2>/dev/null; then
    log "some locked files are not here yet: fetching them by hash"
    .venv/bin/pip download -q --no-deps --require-hashes --dest "$WHEELS" \
      -r image/requirements.lock
    .venv/bin/pip download -q --no-deps --require-hashes --no-index \
      --find-links "$WHEELS" --dest "$stage" -r image/requirements.lock
  fi
  local whl
  whl=$(ls "$WHEELS"/store_relay_appliance-*.whl)
  VERSION=$(basename "$whl" | cut -d- -f2)
  cp "$whl" "$stage/"
  # The lock the role installs with --require-hashes: the image's lock plus
  # the appliance's own wheel.
  {
    cat image/requirements.lock
    echo "store-relay-appliance==$VERSION --hash=sha256:$(sha256sum "$whl" | cut -d' ' -f1)"
  } >"$stage/requirements.lock"
  rm -f "$OUT"/wheelhouse-*.tar
  tar -C "$stage" -cf "$OUT/wheelhouse-$VERSION.tar" .
  rm -rf "$stage"
  log "wheelhouse-$VERSION.tar: $(($(grep -c == image/requirements.lock) + 1)) locked files"
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

  install_appliance
  configure
  in_tree apt-get -qq clean
  rm -f "$TREE/usr/sbin/policy-rc.d" "$TREE/etc/resolv.conf"
  umount_api
  trap - EXIT
  log "tree ready: $(du -sh "$TREE" | cut -f1)"
}

install_appliance() {
  # One definition for a NUC and a fleet box: the role `appliance` installs
  # the release (venv from the locked wheelhouse, `current`, settings, units)
  # through the appliance_chroot connection, inside the tree, so every path
  # is the one the NUC will have. A rebuild starts from no release at all.
  local archive
  archive=$(ls "$OUT"/wheelhouse-*.tar)
  VERSION=$(basename "$archive" .tar | cut -d- -f2)
  log "installing release $VERSION with the Ansible role (chroot connection)"
  [ -x "$ANSIBLE_VENV/bin/ansible-playbook" ] || {
    echo "no ansible-playbook in $ANSIBLE_VENV (make image creates it)" >&2
    return 1
  }
  rm -rf "$TREE/opt/appliance" "$TREE/root/.ansible"
  rm -f "$TREE/etc/appliance/appliance.toml" \
    "$TREE"/etc/systemd/system/appliance*.service \
    "$TREE"/etc/systemd/system/appliance*.target
  # The settings belong to group appliance: the user exists before the role.
  install -D -m 0644 systemd/appliance.sysusers "$TREE/usr/lib/sysusers.d/appliance.conf"
  install -D -m 0644 systemd/appliance.tmpfiles "$TREE/usr/lib/tmpfiles.d/appliance.conf"
  in_tree systemd-sysusers
  in_tree systemd-tmpfiles --create /usr/lib/tmpfiles.d/appliance.conf || true
  # Store content beside the releases: the enricher's scripts (named by the
  # settings, image/ansible-vars.yml) and the documentation.
  mkdir -p "$TREE/opt/appliance/docs" "$TREE/opt/appliance/scripts"
  cp README.md "$TREE/opt/appliance/"
  cp docs/*.md "$TREE/opt/appliance/docs/"
  cp config/scripts/* "$TREE/opt/appliance/scripts/"

  # The peers of image.conf (also the firewall's), on top of the image's vars.
  local brokers extra
  brokers=$(printf '%s\n' $IMAGE_KAFKA_BROKERS | paste -sd, -)
  extra=$(printf '{"appliance_version": "%s", "appliance_wheelhouse_archive": "%s",
    "appliance_units_src": "%s", "appliance_ibmi_host": "%s",
    "appliance_kafka_bootstrap": "%s", "appliance_webui_port": %d,
    "ansible_python_interpreter": "/usr/bin/python3"}' \
    "$VERSION" "$archive" "$REPO/systemd" "$IMAGE_IBMI_HOST" "$brokers" \
    "$IMAGE_WEBUI_PORT")
  mkdir -p "$OUT/ansible-home"
  if ! (cd ansible && env ANSIBLE_CONFIG="$REPO/ansible/ansible.cfg" \
    ANSIBLE_HOME="$OUT/ansible-home" ANSIBLE_LOCAL_TEMP="$OUT/ansible-home/tmp" \
    ANSIBLE_REMOTE_TMP=/tmp/.ansible-build ANSIBLE_PIPELINING=True \
    ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=False \
    "$ANSIBLE_VENV/bin/ansible-playbook" -i "$TREE," -c appliance_chroot site.yml \
    -e "@$REPO/image/ansible-vars.yml" -e "$extra" >"$OUT/ansible.log" 2>&1); then
    tail -n 40 "$OUT/ansible.log" >&2
    return 1
  fi
  grep -A3 '^PLAY RECAP' "$OUT/ansible.log" | tail -n +2 | sed 's/  */ /g' >&2
  rm -rf "$TREE/root/.ansible" "$TREE/tmp/.ansible-build"

  # The image's own first-boot unit (not a release unit: the role skips it).
  install -m 0644 systemd/appliance-firstboot.service "$TREE/etc/systemd/system/"
}

configure() {
  log "configuring the hardening"
  cp -r image/overlay/. "$TREE/"
  chmod 0755 "$TREE"/usr/local/sbin/*
  render_firewall >"$TREE/etc/nftables.conf"

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
