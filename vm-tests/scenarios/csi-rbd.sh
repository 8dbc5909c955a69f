#!/bin/bash
# rbd.csi.moor.io against a real Ceph cluster, driven by an independent Python gRPC client as kubelet drives it: a filesystem volume (the key from the stage secrets, never in moor's log; formatted once, published, its data in the image, stats = df, NodeExpandVolume after rbd resize grows it online) and a raw block volume (mapped, never formatted, /dev/rbdN bound onto kubelet's publish file, a write through it is in the image); after unpublish/unstage nothing mapped, no key file, no mount.
# vm: mem=3072 cpus=2 timeout=600
set -euo pipefail
. "$LAB_DIR/lib/moor-csi.sh"
. "$LAB_DIR/servers/ceph.sh"

R() { lab_with_deadline 60 rbd "$@"; }

lab_require_moor
lab_ceph_start
lab_on_exit lab_ceph_stop
lab_modprobe rbd
R create "$CEPH_RBD_POOL/csi-fs" --size 64M --image-feature layering
R create "$CEPH_RBD_POOL/csi-blk" --size 64M --image-feature layering
# No CEPH_CONF for the daemon: moor must reach the cluster with the PV's attributes and the
# stage secret alone.
conf=$CEPH_CONF
unset CEPH_CONF
csi_daemon_start rbd
export CEPH_CONF=$conf
lab_step "ceph ready, images csi-fs and csi-blk; rbd.csi.moor.io ready"

KEY=$(cat "$CEPH_RBD_SECRET_FILE")
mapped() { find /sys/bus/rbd/devices -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
# the PV's volumeAttributes: FlexVolume's rbd option names; the key comes as a stage secret
attrs() { echo --attr "monitors=$CEPH_MON" --attr "pool=$CEPH_RBD_POOL" --attr "image=$1" --attr "user=$CEPH_RBD_USER"; }
# shellcheck disable=SC2207  # the words of attrs are single tokens (no spaces)
FS_ATTRS=($(attrs csi-fs) --fs-type ext4 --access-mode SINGLE_NODE_WRITER)
# shellcheck disable=SC2207
BLK_ATTRS=($(attrs csi-blk) --block --access-mode SINGLE_NODE_WRITER)

# --- a stage without the key fails and maps nothing --------------------------------------
FSVOL=rbd-pv-fs FSPV=pv-rbd-fs UID1=c5400004-0000-4000-8000-000000000001
FS_STAGING=$(csi_staging rbd "$FSVOL") T1=$(csi_target "$UID1" "$FSPV")
mkdir -p "$FS_STAGING"
_csi_run rbd NodeStageVolume --volume-id "$FSVOL" --staging "$FS_STAGING" "${FS_ATTRS[@]}" \
  && lab_die "NodeStageVolume without the key secret succeeded"
lab_log "stage without the key: $CSI_ERR"
lab_assert_eq "$(mapped)" 0 "mappings after a stage without the key"

# --- filesystem volume ----------------------------------------------------------------
assert_unmapped() {
  lab_assert_eq "$(mapped)" 0 "mappings"
  [[ -z $(ls -A /run/moor/secrets 2>/dev/null) ]] || lab_die "key files left: $(find /run/moor/secrets)"
  share_assert_clean rbd
}
fs_stage_publish() {
  csi_stage rbd "$FSVOL" "$FS_STAGING" "${FS_ATTRS[@]}" --secret "key=$KEY"
  lab_assert_eq "$(mapped)" 1 "mappings after the fs stage"
  csi_publish rbd "$FSVOL" "$FS_STAGING" "$T1" "${FS_ATTRS[@]}" --secret "key=$KEY" --pod-uid "$UID1"
  lab_assert_mounted "$T1" ext4
}
fs_unpublish_unstage() {
  csi_unpublish rbd "$FSVOL" "$T1"
  csi_unstage rbd "$FSVOL" "$FS_STAGING"
  assert_unmapped
}
fs_stage_publish
echo written-through-csi > "$T1/data"
fs_unpublish_unstage
R export --no-progress "$CEPH_RBD_POOL/csi-fs" "$LAB_STATE/csi-fs.raw" >/dev/null
lab_assert_eq "$(debugfs -R 'cat /data' "$LAB_STATE/csi-fs.raw" 2>/dev/null)" written-through-csi "the pod's file in the exported image"
rm -f "$LAB_STATE/csi-fs.raw"
lab_step "filesystem: mapped with the stage secret, ext4 published into the pod; after unpublish + unstage nothing mapped, no key file, and the pod's file is in the image"

# --- raw block volume -----------------------------------------------------------------
BLKVOL=rbd-pv-blk BLKPV=pv-rbd-blk UID2=c5400004-0000-4000-8000-000000000002
BLK_STAGING=$(csi_block_staging "$BLKPV") T2=$(csi_block_target "$BLKPV" "$UID2")
csi_stage rbd "$BLKVOL" "$BLK_STAGING" "${BLK_ATTRS[@]}" --secret "key=$KEY"
lab_assert_eq "$(mapped)" 1 "mappings after the block stage"
# Raw block: the stage maps only. A signature now means moor wrote to the image.
rbddev=/dev/rbd$(basename "$(find /sys/bus/rbd/devices -mindepth 1 -maxdepth 1)")
if blkid -p "$rbddev" >/dev/null 2>&1; then lab_die "the raw block stage wrote a signature to $rbddev: $(blkid -p "$rbddev")"; fi
csi_publish rbd "$BLKVOL" "$BLK_STAGING" "$T2" "${BLK_ATTRS[@]}" --secret "key=$KEY" --pod-uid "$UID2"
[[ -b $T2 ]] || lab_die "$T2 is not a block device after the raw block publish"
devno=$(stat -L -c '%t:%T' "$T2")
dev=$(basename "$(readlink -f "/sys/dev/block/$((16#${devno%:*})):$((16#${devno#*:}))")")
[[ $dev == rbd* ]] || lab_die "the block target is device $dev, not an rbd mapping"
sum=$(csi_block_write "$T2" $((8 << 20)))
st=$(csi_stats rbd "$BLKVOL" "$T2")
lab_assert_eq "$(csi_usage "$st" BYTES total)" $((64 << 20)) "stats total of the block volume"
csi_unpublish rbd "$BLKVOL" "$T2"
csi_unstage rbd "$BLKVOL" "$BLK_STAGING"
assert_unmapped
R export --no-progress "$CEPH_RBD_POOL/csi-blk" "$LAB_STATE/csi-blk.raw" >/dev/null
csi_block_expect "$LAB_STATE/csi-blk.raw" $((8 << 20)) "$sum"
lab_step "raw block: /dev/$dev bound onto $T2, never formatted, 1 MiB written through it is in the image; stats = 64 MiB; nothing mapped after unstage"

# --- the filesystem volume again: stats, then NodeExpandVolume after rbd resize ------------
fs_stage_publish
lab_assert_file_eq "$T1/data" written-through-csi
st=$(csi_stats rbd "$FSVOL" "$T1")
lab_assert_eq "$(csi_usage "$st" BYTES total)" "$(df -B1 --output=size "$T1" | tail -n 1 | tr -d ' ')" "stats total bytes vs df"
lab_assert_eq "$(csi_usage "$st" INODES total)" "$(df --output=itotal "$T1" | tail -n 1 | tr -d ' ')" "stats inodes vs df -i"
jq -e '.volume_condition.abnormal == false' <<< "$st" >/dev/null || lab_die "condition of a healthy volume: $st"
before=$(df -B1 --output=size "$T1" | tail -n 1 | tr -d ' ')
R resize "$CEPH_RBD_POOL/csi-fs" --size 128M
reply=$(csi rbd NodeExpandVolume --volume-id "$FSVOL" --volume-path "$T1" --required-bytes $((128 << 20)) \
  --fs-type ext4 --access-mode SINGLE_NODE_WRITER)
after=$(df -B1 --output=size "$T1" | tail -n 1 | tr -d ' ')
(( after > before * 18 / 10 )) || lab_die "image doubled, $T1 shows $after bytes (was $before); reply $reply"
(( $(jq -r .capacity_bytes <<< "$reply") >= 128 << 20 )) || lab_die "NodeExpandVolume capacity_bytes: $reply"
lab_assert_file_eq "$T1/data" written-through-csi
fs_unpublish_unstage
R export --no-progress "$CEPH_RBD_POOL/csi-fs" "$LAB_STATE/csi-fs.raw" >/dev/null
e2fsck -fn "$LAB_STATE/csi-fs.raw" >/dev/null || lab_die "the grown ext4 in csi-fs does not check clean"
share_daemon_stop
if grep -qF -- "$KEY" "$LAB_OUT/moor-daemon.log"; then lab_die "the key is in moor's log"; fi
lab_step "filesystem again: data there, stats = df, NodeExpandVolume grew ext4 online from $before to $after bytes; nothing left, the ext4 checks clean, the key never in moor's log"
