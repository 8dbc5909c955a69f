#!/bin/bash
# Lab self-test: the LIO target helper serves plain, CHAP, mutual-CHAP and two-portal LUNs to open-iscsi.
# vm: moor=no timeout=240
set -euo pipefail
. "$LAB_DIR/lib/lab.sh"
. "$LAB_DIR/servers/iscsi-target.sh"

lab_on_exit lab_iscsi_target_stop
lab_on_exit 'iscsiadm -m node --logoutall=all'

# node ARGS… — iscsiadm on the current target's node record.
node() { iscsiadm -m node -T "$LAB_ISCSI_IQN" -p "$1" "${@:2}"; }
by_path() { echo "/dev/disk/by-path/ip-$1-iscsi-$LAB_ISCSI_IQN-lun-0"; }
wait_disk() { lab_wait_for 30 "$1" test -b "$1"; readlink -f "$1"; }
check_io() { # DEV FSTYPE
  local dev=$1 fs=$2 mnt=/mnt/lab-iscsi sum
  mkdir -p "$mnt"
  # The lab may force (the LUN is reused across file systems); moor never does.
  case $fs in xfs) mkfs.xfs -q -f "$dev" ;; *) "mkfs.$fs" -q -F "$dev" ;; esac >/dev/null
  mount "$dev" "$mnt"
  dd if=/dev/urandom of="$mnt/data" bs=1M count=8 status=none
  sum=$(md5sum < "$mnt/data")
  umount "$mnt"; mount "$dev" "$mnt"
  lab_assert_eq "$(md5sum < "$mnt/data")" "$sum" "$fs data after remount"
  umount "$mnt"
}

lab_iscsi_target plain
node "$LAB_ISCSI_PORTAL" -o new >/dev/null
lab_run node "$LAB_ISCSI_PORTAL" --login
dev=$(wait_disk "$(by_path "$LAB_ISCSI_PORTAL")")
lab_assert_eq "$(/lib/udev/scsi_id -g -u -x "$dev" | sed -n 's/^ID_SCSI_SERIAL=//p')" "$LAB_ISCSI_SERIAL" "unit serial"
wwid_plain=$(/lib/udev/scsi_id -g -u "$dev")
check_io "$dev" ext4
check_io "$dev" xfs
lab_run node "$LAB_ISCSI_PORTAL" --logout
lab_wait_for 20 "$dev to go away after logout" test ! -e "$dev"
lab_step "plain: login, ext4 + xfs write/remount/verify, logout removes $dev"

lab_iscsi_target chap
node "$LAB_ISCSI_PORTAL" -o new >/dev/null
node "$LAB_ISCSI_PORTAL" -o update -n node.session.auth.authmethod -v CHAP
node "$LAB_ISCSI_PORTAL" -o update -n node.session.auth.username -v "$LAB_ISCSI_CHAP_USER"
node "$LAB_ISCSI_PORTAL" -o update -n node.session.auth.password -v wrong-secret-0000
lab_assert_cmd_fails node "$LAB_ISCSI_PORTAL" --login
node "$LAB_ISCSI_PORTAL" -o update -n node.session.auth.password -v "$LAB_ISCSI_CHAP_SECRET"
lab_run node "$LAB_ISCSI_PORTAL" --login
dev=$(wait_disk "$(by_path "$LAB_ISCSI_PORTAL")")
check_io "$dev" ext4
lab_run node "$LAB_ISCSI_PORTAL" --logout
lab_step "chap: wrong secret refused, right secret logs in ($dev)"

lab_iscsi_target mutual
node "$LAB_ISCSI_PORTAL" -o new >/dev/null
node "$LAB_ISCSI_PORTAL" -o update -n node.session.auth.authmethod -v CHAP
node "$LAB_ISCSI_PORTAL" -o update -n node.session.auth.username -v "$LAB_ISCSI_CHAP_USER"
node "$LAB_ISCSI_PORTAL" -o update -n node.session.auth.password -v "$LAB_ISCSI_CHAP_SECRET"
node "$LAB_ISCSI_PORTAL" -o update -n node.session.auth.username_in -v "$LAB_ISCSI_CHAP_MUTUAL_USER"
node "$LAB_ISCSI_PORTAL" -o update -n node.session.auth.password_in -v wrong-mutual-0000
lab_assert_cmd_fails node "$LAB_ISCSI_PORTAL" --login
node "$LAB_ISCSI_PORTAL" -o update -n node.session.auth.password_in -v "$LAB_ISCSI_CHAP_MUTUAL_SECRET"
lab_run node "$LAB_ISCSI_PORTAL" --login
dev=$(wait_disk "$(by_path "$LAB_ISCSI_PORTAL")")
lab_run node "$LAB_ISCSI_PORTAL" --logout
lab_step "mutual chap: a target with the wrong secret is refused, the right one logs in"

lab_iscsi_target multipath
read -r p1 p2 <<< "$LAB_ISCSI_PORTALS"
for p in "$p1" "$p2"; do
  node "$p" -o new >/dev/null
  lab_run node "$p" --login
done
d1=$(wait_disk "$(by_path "$p1")"); d2=$(wait_disk "$(by_path "$p2")")
w1=$(/lib/udev/scsi_id -g -u "$d1"); w2=$(/lib/udev/scsi_id -g -u "$d2")
lab_assert_eq "$w2" "$w1" "WWID of the second path"
[[ $w1 != "$wwid_plain" ]] || lab_die "two different LUNs share WWID $w1"
lab_step "multipath: two sessions, $d1 and $d2 share WWID $w1"
lab_multipathd_start
lab_on_exit lab_multipathd_stop
lab_wait_for 30 "a multipath map with 2 active paths for $w1" \
  sh -c "multipath -r >/dev/null 2>&1; multipath -ll '$w1' | grep -c 'active ready' | grep -qx 2"
multipath -ll "$w1"
lab_wait_for 20 "/dev/mapper/$w1" test -b "/dev/mapper/$w1"
check_io "/dev/mapper/$w1" ext4
lab_step "multipath: dm map /dev/mapper/$w1 with both paths active, I/O through it"
multipath -F
for p in "$p1" "$p2"; do lab_run node "$p" --logout; done
