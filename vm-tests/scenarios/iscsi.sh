#!/bin/bash
# moor~iscsi against the LIO target: mount, data survives remount, second pod sees it, nothing left after the last unmount, never formats a foreign filesystem.
# vm: timeout=420
set -euo pipefail
. "$LAB_DIR/lib/lab.sh"
. "$LAB_DIR/lib/moor-node.sh"
. "$LAB_DIR/servers/iscsi-target.sh"

lab_require_moor
lab_on_exit lab_iscsi_target_stop
lab_on_exit 'iscsiadm -m node --logoutall=all >/dev/null 2>&1 || true'
lab_iscsi_initiator
lab_iscsi_target plain
LOG=/tmp/moor-daemon.log
"$MOOR" daemon --metrics-addr off >"$LOG" 2>&1 &
DAEMON=$!
lab_on_exit "kill $DAEMON 2>/dev/null || true"
lab_wait_for 20 "moor socket" test -S /run/moor/moor.sock

opts() { # UID FSTYPE
  jq -cn --arg p "$LAB_ISCSI_PORTAL" --arg iqn "$LAB_ISCSI_IQN" --arg uid "$1" --arg fs "$2" '{
    targetPortal: $p, iqn: $iqn, lun: "0", "kubernetes.io/fsType": $fs,
    "kubernetes.io/readwrite": "rw", "kubernetes.io/pod.uid": $uid, "kubernetes.io/pvOrVolumeName": "vol1" }'
}
sessions() { { iscsiadm -m session 2>/dev/null || true; } | wc -l; }
UID1=11111111-0000-4000-8000-000000000001 UID2=11111111-0000-4000-8000-000000000002
POD1=$(lab_pod_volume_dir $UID1 iscsi vol1) POD2=$(lab_pod_volume_dir $UID2 iscsi vol1)
mkdir -p "$POD1" "$POD2"

lab_moor_flex mount "$POD1" "$(opts $UID1 ext4)" >/dev/null
lab_assert_mounted "$POD1"
dd if=/dev/urandom of="$POD1/data" bs=1M count=4 status=none
sum=$(md5sum < "$POD1/data")
lab_moor_flex unmount "$POD1" >/dev/null
lab_assert_eq "$(sessions)" 0 "sessions after the last unmount"
scsi_disks() { local d n=0; for d in /sys/class/scsi_disk/*; do [[ -e $d && ${d##*/} != 0:* ]] && n=$((n + 1)); done; echo "$n"; }
lab_assert_eq "$(scsi_disks)" 0 "iSCSI SCSI disks after the last unmount"
lab_step "mount, write, unmount: no session, no SCSI device left"

lab_moor_flex mount "$POD1" "$(opts $UID1 ext4)" >/dev/null
lab_moor_flex mount "$POD2" "$(opts $UID2 ext4)" >/dev/null
lab_assert_eq "$(md5sum < "$POD2/data")" "$sum" "data through the second pod dir after remount"
lab_assert_eq "$(sessions)" 1 "one session for two pods"
lab_moor_flex unmount "$POD1" >/dev/null
lab_assert_eq "$(sessions)" 1 "session kept while pod 2 uses it"
lab_moor_flex unmount "$POD2" >/dev/null
lab_assert_eq "$(sessions)" 0 "sessions after the last unmount"
lab_step "remount: data intact, visible through a second pod dir; session gone after the last unmount"

# A filesystem of another type is never formatted.
login() { iscsiadm -m node -T "$LAB_ISCSI_IQN" -p "$LAB_ISCSI_PORTAL" --login >/dev/null 2>&1 || [[ $? == 15 ]]; }
lun_dev() { ls /sys/class/iscsi_session/session*/device/target*/*:0/block/ 2>/dev/null | head -n 1; }
iscsiadm -m node -T "$LAB_ISCSI_IQN" -p "$LAB_ISCSI_PORTAL" -o update -n node.session.scan -v auto
login
lab_wait_for 20 "LUN 0 disk" sh -c '[ -n "$(ls /sys/class/iscsi_session/session*/device/target*/*:0/block/ 2>/dev/null)" ]'
dev=/dev/$(lun_dev)
mkfs.xfs -q -f "$dev"; xfs_uuid=$(blkid -p -o value -s UUID "$dev")
iscsiadm -m node -T "$LAB_ISCSI_IQN" -p "$LAB_ISCSI_PORTAL" --logout >/dev/null
reply=$("$MOOR" flex mount "$POD1" "$(opts $UID1 ext4)" || true)
lab_log "reply: $reply"
lab_assert_eq "$(jq -r .status <<< "$reply")" Failure "mount of an xfs LUN as ext4"
lab_assert_not_mounted "$POD1"
lab_assert_eq "$(sessions)" 0 "sessions after the refused mount"
iscsiadm -m node -T "$LAB_ISCSI_IQN" -p "$LAB_ISCSI_PORTAL" -o update -n node.session.scan -v auto
login
lab_wait_for 20 "LUN 0 disk" sh -c '[ -n "$(ls /sys/class/iscsi_session/session*/device/target*/*:0/block/ 2>/dev/null)" ]'
lab_assert_eq "$(blkid -p -o value -s UUID "/dev/$(lun_dev)")" "$xfs_uuid" "xfs left intact"
lab_step "an xfs LUN asked as ext4: Failure, never formatted"
iscsiadm -m node -T "$LAB_ISCSI_IQN" -p "$LAB_ISCSI_PORTAL" --logout >/dev/null

# The LUN was reformatted by hand on purpose (xfs): moor still remembers its ext4 and would
# refuse it (device_changed); the operator says so with `moor forget`.
key=$("$MOOR" status -o json | jq -r '[.volumes[]? | select(.driver == "iscsi") | .key][0] // empty')
[[ -n $key ]] || lab_die "no idle iscsi volume in moor status"
"$MOOR" forget "$key" >/dev/null

# Crash safety: SIGKILL right after the login (pause point iscsi:logged-in, before attach
# returns), restart: reconstruction logs the orphan session out; kubelet's retry converges.
"$MOOR" version | grep -q test-hooks ||
  lab_die "$MOOR has no pause points: build it with cargo build --features test-hooks"
kill "$DAEMON"; wait "$DAEMON" 2>/dev/null || true
MARKER=/tmp/moor-paused; rm -f "$MARKER"
MOOR_TEST_PAUSE_AT=iscsi:logged-in MOOR_TEST_PAUSE_MARKER=$MARKER "$MOOR" daemon --metrics-addr off >>"$LOG" 2>&1 &
DAEMON=$!
lab_on_exit "kill -9 $DAEMON 2>/dev/null || true"
lab_wait_for 20 "moor socket" test -S /run/moor/moor.sock
"$MOOR" flex mount "$POD1" "$(opts $UID1 xfs)" >/tmp/crash-reply.json 2>&1 &
FLEX=$!
lab_wait_for 60 "pause point iscsi:logged-in" test -e "$MARKER"
lab_assert_eq "$(sessions)" 1 "session logged in at the pause point"
kill -9 "$DAEMON"; wait "$DAEMON" 2>/dev/null || true
wait "$FLEX" || true
lab_assert_eq "$(jq -r .status /tmp/crash-reply.json)" Failure "kubelet's reply from the killed daemon"
"$MOOR" daemon --metrics-addr off >>"$LOG" 2>&1 &
DAEMON=$!
lab_on_exit "kill $DAEMON 2>/dev/null || true"
lab_wait_for 20 "moor socket" test -S /run/moor/moor.sock
lab_wait_for 30 "the orphan session logged out by reconstruction" sh -c "[ \"\$( { iscsiadm -m session 2>/dev/null || true; } | wc -l)\" = 0 ]"
lab_assert_not_mounted "$POD1"
lab_moor_flex mount "$POD1" "$(opts $UID1 xfs)" >/dev/null
lab_assert_mounted "$POD1"
lab_moor_flex unmount "$POD1" >/dev/null
lab_assert_eq "$(sessions)" 0 "sessions after the last unmount"
lab_step "SIGKILL after login: restart leaves no orphan session; the retried mount converges"

# initiatorName: the session logs in under the name the volume asks for, and the node record
# moor wrote (one private write) keeps the node from logging in at boot or scanning every LUN.
INITIATOR=iqn.2024-01.dev.moor.lab:custom-initiator
lab_moor_flex mount "$POD1" "$(opts $UID1 xfs | jq -c --arg i "$INITIATOR" '. + {initiatorName: $i}')" >/dev/null
lab_assert_mounted "$POD1"
lab_assert_eq "$(cat /sys/class/iscsi_session/session*/initiatorname)" "$INITIATOR" "the session's initiator name"
rec=$(ls /etc/iscsi/nodes/"$LAB_ISCSI_IQN"/*/default)
for kv in "node.startup = manual" "node.session.scan = manual" "iface.initiatorname = $INITIATOR"; do
  grep -qxF "$kv" "$rec" || lab_die "node record $rec lacks '$kv': $(cat "$rec")"
done
lab_moor_flex unmount "$POD1" >/dev/null
lab_assert_eq "$(sessions)" 0 "sessions after the last unmount"
# The next volume of this target names no initiator: it logs in as the node, not as the last one.
lab_moor_flex mount "$POD1" "$(opts $UID1 xfs)" >/dev/null
lab_assert_eq "$(cat /sys/class/iscsi_session/session*/initiatorname)" \
  "$(sed -n 's/^InitiatorName=//p' /etc/iscsi/initiatorname.iscsi)" "the session's initiator name without initiatorName"
lab_moor_flex unmount "$POD1" >/dev/null
lab_assert_eq "$(sessions)" 0 "sessions after the last unmount"
lab_step "initiatorName used for the login and not left for the next volume; node record: manual startup, manual scan"
