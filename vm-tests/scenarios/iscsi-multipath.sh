#!/bin/bash
# moor~iscsi with two portals: both sessions, the dm-multipath map is what gets mounted; the LUN grown on the target is grown online by expandfs (both paths rescanned, the map resized, ext4 grown); after the last unmount no session, map or SCSI disk remains.
# vm: timeout=420
set -euo pipefail
. "$LAB_DIR/lib/lab.sh"
. "$LAB_DIR/lib/moor-node.sh"
. "$LAB_DIR/servers/iscsi-target.sh"

lab_require_moor
lab_on_exit lab_iscsi_target_stop
lab_on_exit 'iscsiadm -m node --logoutall=all >/dev/null 2>&1 || true'
lab_iscsi_initiator
LAB_ISCSI_BACKING=loop lab_iscsi_target multipath
read -r p1 p2 <<< "$LAB_ISCSI_PORTALS"
lab_multipathd_start
lab_on_exit lab_multipathd_stop

LOG=/tmp/moor-daemon.log
"$MOOR" daemon --metrics-addr off >"$LOG" 2>&1 &
DAEMON=$!
lab_on_exit "kill $DAEMON 2>/dev/null || true"
lab_wait_for 20 "moor socket" test -S /run/moor/moor.sock
sessions() { { iscsiadm -m session 2>/dev/null || true; } | wc -l; }
opts() { jq -cn --arg p "$p1" --arg ps "[\"$p1\",\"$p2\"]" --arg iqn "$LAB_ISCSI_IQN" --arg uid "$1" '{
  targetPortal: $p, portals: $ps, iqn: $iqn, lun: "0", "kubernetes.io/fsType": "ext4",
  "kubernetes.io/readwrite": "rw", "kubernetes.io/pod.uid": $uid, "kubernetes.io/pvOrVolumeName": "mp1" }'; }
UID1=44444444-0000-4000-8000-000000000001 UID2=44444444-0000-4000-8000-000000000002
POD1=$(lab_pod_volume_dir $UID1 iscsi mp1) POD2=$(lab_pod_volume_dir $UID2 iscsi mp1)
mkdir -p "$POD1" "$POD2"

lab_moor_flex mount "$POD1" "$(opts $UID1)" >/dev/null
lab_assert_eq "$(sessions)" 2 "sessions (one per portal)"
src=$(findmnt -n -o SOURCE --target "$POD1")
lab_log "pod dir backed by $src"
case $(basename "$(readlink -f "$src")") in dm-*) ;; *) lab_die "mounted $src, not the dm-multipath map" ;; esac
echo mp-data > "$POD1/data"
lab_moor_flex unmount "$POD1" >/dev/null
lab_assert_eq "$(sessions)" 0 "sessions after the last unmount"
lab_assert_eq "$(dmsetup ls --target multipath 2>/dev/null | grep -vc 'No devices' || true)" 0 "multipath maps after the last unmount"
lab_step "two portals: mounted through dm-multipath; nothing left after unmount"

lab_moor_flex mount "$POD2" "$(opts $UID2)" >/dev/null
lab_assert_eq "$(cat "$POD2/data")" mp-data "data through a second pod dir"
lab_step "remount through multipath: data intact"

# kubelet's NodeExpand after the claim grew: the PV's options (no pod keys), new and old
# sizes. Before the LUN grows it is refused; after, every path is rescanned, the map resized
# and the mounted ext4 grown.
pv=$(opts $UID2 | jq -c 'del(."kubernetes.io/pod.uid")')
old=$((512 << 20)) new=$((1024 << 20))
size_of() { df -B1 --output=size "$POD2" | tail -n 1 | tr -d ' '; }
before=$(size_of)
reply=$(lab_with_deadline 120 "$MOOR" flex --driver iscsi expandfs "$pv" not-used "" "$new" "$old") || true
jq -r .message <<< "$reply" | grep -q '^device_too_small:' || lab_die "expandfs before the LUN grew: $reply"
lab_iscsi_grow multipath 1024
lab_moor_flex --driver iscsi expandfs "$pv" not-used "" "$new" "$old" >/dev/null
after=$(size_of)
dm=$(readlink -f "$(findmnt -n -o SOURCE --target "$POD2")")
lab_assert_eq "$(blockdev --getsize64 "$dm")" "$new" "size of the multipath map $dm"
for s in /sys/block/"$(basename "$dm")"/slaves/*; do
  lab_assert_eq "$(( $(cat "$s/size") * 512 ))" "$new" "size of path $(basename "$s")"
done
(( after > before * 18 / 10 )) || lab_die "the LUN doubled but $POD2 shows $after bytes (was $before)"
lab_assert_eq "$(cat "$POD2/data")" mp-data "data after the grow"
lab_step "expandfs: refused before the LUN grew; then both paths rescanned, the map resized and ext4 grown online from $before to $after bytes"

lab_moor_flex unmount "$POD2" >/dev/null
lab_assert_eq "$(sessions)" 0 "sessions after the second unmount"
e2fsck -fn "$LAB_STATE/iscsi/multipath.img" >/dev/null || lab_die "the grown ext4 is not clean on the target's disk"
lab_step "unmounted: no session left; the grown filesystem checks clean on the target's disk"
