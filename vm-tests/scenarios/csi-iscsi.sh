#!/bin/bash
# iscsi.csi.moor.io over two portals (dm-multipath) driven by an independent Python gRPC client as kubelet drives it: a filesystem volume (formatted once, published into a pod, its data on the LUN, stats = df) and a raw block volume (staged without any mkfs, the map bound onto kubelet's publish file, a write through that file lands on the LUN, stats = the LUN's size); a shared-writer filesystem mode refused; after unpublish/unstage no mount, session or map.
# vm: timeout=480
set -euo pipefail
. "$LAB_DIR/lib/moor-csi.sh"
. "$LAB_DIR/servers/iscsi-target.sh"

lab_require_moor
lab_on_exit lab_iscsi_target_stop
lab_on_exit 'iscsiadm -m node --logoutall=all >/dev/null 2>&1 || true'
lab_iscsi_initiator
lab_iscsi_target multipath fs
FS_IQN=$LAB_ISCSI_IQN FS_LUN=$LAB_STATE/iscsi/fs.img
lab_iscsi_target multipath blk
BLK_IQN=$LAB_ISCSI_IQN BLK_LUN=$LAB_STATE/iscsi/blk.img
read -r p1 p2 <<< "$LAB_ISCSI_PORTALS"
lab_multipathd_start
lab_on_exit lab_multipathd_stop
csi_daemon_start iscsi
lab_step "two LIO targets (fs, blk) behind portals $p1 and $p2; multipathd; iscsi.csi.moor.io ready"

sessions() { { iscsiadm -m session 2>/dev/null || true; } | grep -c "$1" || true; }
maps() { dmsetup ls --target multipath 2>/dev/null | grep -vc 'No devices' || true; }
# the PV's volumeAttributes: FlexVolume's iscsi option names
attrs() { echo --attr "targetPortal=$p1" --attr "portals=[\"$p1\",\"$p2\"]" --attr "iqn=$1" --attr lun=0; }
# shellcheck disable=SC2207  # the words of attrs are single tokens (no spaces)
FS_ATTRS=($(attrs "$FS_IQN") --fs-type ext4 --access-mode SINGLE_NODE_WRITER)
# shellcheck disable=SC2207
BLK_ATTRS=($(attrs "$BLK_IQN") --block --access-mode SINGLE_NODE_WRITER)

# --- an access mode a block-storage filesystem cannot honour ----------------------------
BAD=iscsi-pv-bad BAD_STAGING=$(csi_staging iscsi iscsi-pv-bad)
mkdir -p "$BAD_STAGING"
# shellcheck disable=SC2046
msg=$(csi_fails INVALID_ARGUMENT iscsi NodeStageVolume --volume-id "$BAD" --staging "$BAD_STAGING" \
  $(attrs "$FS_IQN") --fs-type ext4 --access-mode MULTI_NODE_MULTI_WRITER)
[[ $msg == unsupported_capability:* ]] || lab_die "MULTI_NODE_MULTI_WRITER ext4 on iSCSI: $msg"
lab_assert_eq "$(sessions "$FS_IQN")" 0 "sessions after the refused stage"
lab_step "ext4 with MULTI_NODE_MULTI_WRITER refused before any login: INVALID_ARGUMENT ($msg)"

# --- filesystem volume ----------------------------------------------------------------
FSVOL=iscsi-pv-fs FSPV=pv-iscsi-fs UID1=c5300003-0000-4000-8000-000000000001
FS_STAGING=$(csi_staging iscsi "$FSVOL") T1=$(csi_target "$UID1" "$FSPV")
fs_stage_publish() {
  csi_stage iscsi "$FSVOL" "$FS_STAGING" "${FS_ATTRS[@]}"
  lab_assert_eq "$(sessions "$FS_IQN")" 2 "sessions of the fs LUN (one per portal)"
  csi_publish iscsi "$FSVOL" "$FS_STAGING" "$T1" "${FS_ATTRS[@]}" --pod-uid "$UID1"
  lab_assert_mounted "$T1" ext4
  src=$(findmnt -n -o SOURCE --target "$T1")
  case $(basename "$(readlink -f "$src")") in dm-*) ;; *) lab_die "the fs target is backed by $src, not the dm-multipath map" ;; esac
}
fs_unpublish_unstage() {
  csi_unpublish iscsi "$FSVOL" "$T1"
  csi_unstage iscsi "$FSVOL" "$FS_STAGING"
  lab_assert_eq "$(sessions "$FS_IQN")" 0 "sessions of the fs LUN after unstage"
  lab_assert_eq "$(maps)" 0 "multipath maps after the fs unstage"
  share_assert_clean iscsi
}
fs_stage_publish
echo written-through-csi > "$T1/data"
fs_unpublish_unstage
got=$(debugfs -R 'cat /data' "$FS_LUN" 2>/dev/null)
lab_assert_eq "$got" written-through-csi "the pod's file read from the fs LUN's backing store"
lab_step "filesystem: 2 sessions, ext4 on the dm-multipath map ($src) bound into the pod; after unpublish + unstage no mount, session or map, and the pod's file is on the LUN"

# --- raw block volume -----------------------------------------------------------------
BLKVOL=iscsi-pv-blk BLKPV=pv-iscsi-blk UID2=c5300003-0000-4000-8000-000000000002
BLK_STAGING=$(csi_block_staging "$BLKPV") T2=$(csi_block_target "$BLKPV" "$UID2")
csi_stage iscsi "$BLKVOL" "$BLK_STAGING" "${BLK_ATTRS[@]}"
lab_assert_eq "$(sessions "$BLK_IQN")" 2 "sessions of the block LUN"
lab_assert_eq "$(maps)" 1 "multipath maps (the block LUN's)"
# Raw block: the stage attaches only. A signature now means moor wrote to the disk.
if blkid -p "$BLK_LUN" >/dev/null 2>&1; then lab_die "the raw block stage wrote a signature to the LUN: $(blkid -p "$BLK_LUN")"; fi
csi_publish iscsi "$BLKVOL" "$BLK_STAGING" "$T2" "${BLK_ATTRS[@]}" --pod-uid "$UID2"
[[ -b $T2 ]] || lab_die "$T2 is not a block device after the raw block publish"
devno=$(stat -L -c '%t:%T' "$T2")
dev=$(basename "$(readlink -f "/sys/dev/block/$((16#${devno%:*})):$((16#${devno#*:}))")")
[[ $dev == dm-* ]] || lab_die "the block target is device $dev, not the dm-multipath map"
lab_assert_eq "$(blockdev --getsize64 "$T2")" $((512 << 20)) "size of the published block device"
sum=$(csi_block_write "$T2" $((100 << 20)))
csi_block_expect "$BLK_LUN" $((100 << 20)) "$sum"
st=$(csi_stats iscsi "$BLKVOL" "$T2")
lab_assert_eq "$(csi_usage "$st" BYTES total)" $((512 << 20)) "stats total of the block volume"
csi_unpublish iscsi "$BLKVOL" "$T2"
csi_unstage iscsi "$BLKVOL" "$BLK_STAGING"
lab_assert_eq "$(sessions "$BLK_IQN")" 0 "sessions of the block LUN after unstage"
lab_assert_eq "$(maps)" 0 "multipath maps after the block unstage"
lab_step "raw block: 2 sessions, map $dev bound onto $T2, never formatted; 1 MiB written through it is on the LUN; stats = 512 MiB; after unpublish + unstage no session or map"

# --- the filesystem volume again: its data, its stats ------------------------------------
fs_stage_publish
lab_assert_file_eq "$T1/data" written-through-csi
st=$(csi_stats iscsi "$FSVOL" "$T1")
read -r df_size df_avail <<< "$(df -B1 --output=size,avail "$T1" | tail -n 1)"
lab_assert_eq "$(csi_usage "$st" BYTES total)" "$df_size" "stats total bytes vs df"
awk -v a="$(csi_usage "$st" BYTES available)" -v b="$df_avail" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1048576) }' \
  || lab_die "stats available $(csi_usage "$st" BYTES available) vs df $df_avail"
lab_assert_eq "$(csi_usage "$st" INODES total)" "$(df --output=itotal "$T1" | tail -n 1 | tr -d ' ')" "stats inodes vs df -i"
jq -e '.volume_condition.abnormal == false' <<< "$st" >/dev/null || lab_die "condition of a healthy volume: $st"
fs_unpublish_unstage
e2fsck -fn "$FS_LUN" >/dev/null || lab_die "the ext4 on the fs LUN does not check clean"
share_daemon_stop
lab_step "filesystem again: the data is there, stats = df ($df_size bytes), condition normal; nothing left and the ext4 checks clean"
