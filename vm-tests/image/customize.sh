#!/bin/bash
# customize.sh ROOT — mmdebstrap customize hook: turns the freshly installed tree
# into a lab guest. Runs on the host with the guest tree at $1.
set -euo pipefail
ROOT=$1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

echo moorlab > "$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 moorlab\n::1 localhost ip6-localhost ip6-loopback\n' > "$ROOT/etc/hosts"
printf '/dev/vda / ext4 rw,noatime 0 1\n' > "$ROOT/etc/fstab"
# A fixed machine-id: an empty one would make every throwaway guest a "first
# boot" (systemd-firstboot, preset-all) and cost seconds.
echo 6d6f6f726c61626d6f6f726c61623031 > "$ROOT/etc/machine-id"
# Root without a password: the guest has no network, and `run --shell` logs in.
chroot "$ROOT" passwd -d root >/dev/null

# A known initiator name, so scenarios can write target ACLs for it.
mkdir -p "$ROOT/etc/iscsi"
echo "InitiatorName=iqn.2024-01.dev.moor.lab:guest" > "$ROOT/etc/iscsi/initiatorname.iscsi"

install -m 0755 "$HERE/vminit" "$ROOT/sbin/moor-lab-init"
install -m 0644 "$HERE/moor-lab.service" "$ROOT/etc/systemd/system/moor-lab.service"

# Boot under systemd fast: every storage daemon is started by the lab's helpers,
# never by the distribution's units (they would race the helpers for ports and
# configfs). Disable everything that can be disabled, then enable the lab unit.
mkdir -p "$ROOT/etc/systemd/system-preset"
printf 'enable moor-lab.service\ndisable *\n' > "$ROOT/etc/systemd/system-preset/00-moor-lab.preset"
chroot "$ROOT" systemctl preset-all >/dev/null 2>&1 || chroot "$ROOT" systemctl preset-all
for unit in serial-getty@.service getty@.service systemd-networkd-wait-online.service \
            systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer \
            e2scrub_reap.service e2scrub_all.timer fstrim.timer man-db.timer \
            systemd-update-utmp.service systemd-update-utmp-runlevel.service \
            multipathd.socket iscsid.socket rpcbind.socket; do
  ln -sfn /dev/null "$ROOT/etc/systemd/system/$unit"
done
# Full coldplug loads every modalias module (~11 s under TCG); the lab needs block
# devices at boot and handles everything else live.
mkdir -p "$ROOT/etc/systemd/system/systemd-udev-trigger.service.d"
cat > "$ROOT/etc/systemd/system/systemd-udev-trigger.service.d/moor-lab.conf" <<'UNIT'
[Service]
ExecStart=
ExecStart=-udevadm trigger --type=devices --action=add --subsystem-match=block
UNIT
# The journal lives in RAM (the root disk is thrown away anyway); guest-run copies it out.
mkdir -p "$ROOT/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\nForwardToConsole=no\n' > "$ROOT/etc/systemd/journald.conf.d/moor-lab.conf"

# Slim the image: documentation and apt lists are never used in the guest.
rm -rf "$ROOT/usr/share/doc" "$ROOT/usr/share/man" "$ROOT/usr/share/info" \
       "$ROOT/usr/share/locale" "$ROOT/var/cache/apt"/*.bin "$ROOT/var/lib/apt/lists"/*_Packages
