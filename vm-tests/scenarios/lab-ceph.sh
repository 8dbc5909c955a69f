#!/bin/bash
# Lab self-test: servers/ceph.sh brings up a ready single-node Ceph cluster; RBD (krbd map, restricted key, watchers, locks) and CephFS (kernel mount, ceph-fuse, restricted subdir key, eviction) work.
# vm: mem=3072 cpus=2 moor=no timeout=420
set -euo pipefail
. "$LAB_DIR/lib/lab.sh"
. "$LAB_DIR/servers/ceph.sh"

# C: every ceph CLI call bounded (a dead cluster makes them hang)
C() { lab_with_deadline 60 ceph --connect-timeout 15 "$@"; }
R() { lab_with_deadline 60 rbd "$@"; }

lab_ceph_start
lab_on_exit lab_ceph_stop
lab_step "ceph cluster ready (env: $CEPH_DIR/env)"
C -s
for f in "$CEPH_CONF" "$CEPH_ADMIN_KEYRING" "$CEPH_ADMIN_SECRET_FILE" "$CEPH_RBD_KEYRING" \
         "$CEPH_RBD_SECRET_FILE" "$CEPH_FS_KEYRING" "$CEPH_FS_SECRET_FILE"; do
  [[ -s $f ]] || lab_die "missing $f"
done

# ---------------------------------------------------------------- RBD
lab_modprobe rbd
R create "$CEPH_RBD_POOL/img1" --size 128M --image-feature layering --id "$CEPH_RBD_USER"
R info "$CEPH_RBD_POOL/img1" --format json --id "$CEPH_RBD_USER" | jq -e '.size == 134217728' >/dev/null \
  || lab_die "rbd info: wrong size"
lab_assert_cmd_fails R ls -p cephfs_data --id "$CEPH_RBD_USER"       # profile rbd pool=rbd only
dev=$(R map "$CEPH_RBD_POOL/img1" --id "$CEPH_RBD_USER") || lab_die "rbd map failed"
lab_on_exit "rbd unmap -o force $dev"
[[ -b $dev ]] || lab_die "rbd map printed '$dev', not a block device"
lab_step "rbd map as client.$CEPH_RBD_USER: $dev"
R status "$CEPH_RBD_POOL/img1" --format json | jq -e '.watchers | length == 1' >/dev/null \
  || lab_die "mapped image has no watcher: $(R status "$CEPH_RBD_POOL/img1")"
lab_run mkfs.ext4 -q "$dev"
mkdir -p /mnt/rbd
lab_run mount "$dev" /mnt/rbd
echo rbd-data > /mnt/rbd/f
lab_run umount /mnt/rbd
R lock add "$CEPH_RBD_POOL/img1" moor-lab-lock
R lock ls "$CEPH_RBD_POOL/img1" --format json | jq -e 'length == 1' >/dev/null || lab_die "lock not listed"
lab_assert_cmd_fails R lock add "$CEPH_RBD_POOL/img1" other-lock
locker=$(R lock ls "$CEPH_RBD_POOL/img1" --format json | jq -r '.[0].locker')
R lock rm "$CEPH_RBD_POOL/img1" moor-lab-lock "$locker"
lab_run rbd unmap "$dev"
R status "$CEPH_RBD_POOL/img1" --format json | jq -e '.watchers | length == 0' >/dev/null \
  || lab_die "watcher left after unmap"
dev=$(R map "$CEPH_RBD_POOL/img1" --id "$CEPH_RBD_USER" --read-only)
lab_run mount -o ro "$dev" /mnt/rbd
lab_assert_file_eq /mnt/rbd/f rbd-data
lab_run umount /mnt/rbd
lab_run rbd unmap "$dev"
lab_step "RBD: mkfs/mount/write, watcher, exclusive lock add/ls/rm, remap ro and read back"

# ---------------------------------------------------------------- CephFS
lab_modprobe ceph fuse
mkdir -p /mnt/cephfs /mnt/cephfs-fuse /mnt/cephfs-root
lab_run lab_with_deadline 60 mount -t ceph "$CEPH_MON:$CEPH_FS_SUBDIR" /mnt/cephfs \
  -o "name=$CEPH_FS_USER,secretfile=$CEPH_FS_SECRET_FILE,mds_namespace=$CEPH_FS_NAME"
lab_on_exit "umount -f /mnt/cephfs"
lab_assert_mounted /mnt/cephfs ceph
echo kernel-written > /mnt/cephfs/k
lab_step "CephFS kernel mount of $CEPH_FS_SUBDIR as client.$CEPH_FS_USER"
lab_run lab_with_deadline 60 ceph-fuse --id "$CEPH_FS_USER" -r "$CEPH_FS_SUBDIR" /mnt/cephfs-fuse
lab_on_exit "umount /mnt/cephfs-fuse"
lab_assert_mounted /mnt/cephfs-fuse fuse.ceph-fuse
lab_assert_file_eq /mnt/cephfs-fuse/k kernel-written
lab_step "ceph-fuse mount of the same subdir sees the kernel client's file"
# the restricted key must not reach the fs root
lab_assert_cmd_fails lab_with_deadline 60 mount -t ceph "$CEPH_MON:/" /mnt/cephfs-root \
  -o "name=$CEPH_FS_USER,secretfile=$CEPH_FS_SECRET_FILE,mds_namespace=$CEPH_FS_NAME"
lab_step "restricted key refused at /"

# eviction (what a healing test does): the kernel client is blocklisted
lab_ceph fs-evict "$CEPH_FS_USER"
# Captured first: `… | grep -q .` under pipefail fails when grep's early exit SIGPIPEs ceph.
blocklist=$(C osd blocklist ls 2>&1 || true)
[[ $blocklist == *[0-9]* ]] || lab_die "no blocklist entry after evict: $blocklist"
if lab_with_deadline 20 ls /mnt/cephfs >/dev/null 2>&1 && lab_with_deadline 20 touch /mnt/cephfs/after-evict 2>/dev/null; then
  lab_die "evicted kernel mount still writable"
fi
lab_step "fs-evict: sessions evicted, kernel mount no longer usable"

# teardown must leave nothing behind
lab_ceph_stop
if grep -qE ' (ceph|fuse\.ceph-fuse) ' /proc/mounts; then lab_die "ceph mounts left: $(grep ceph /proc/mounts)"; fi
left=""
for n in ceph-mon ceph-mgr ceph-osd ceph-mds ceph-fuse rbd-fuse; do   # pgrep -x: names, not regexes over 15 chars
  for p in $(pgrep -x "$n" || true); do
    lab_pid_alive "$p" && left+=" $n:$p"
  done
done
[[ -z $left ]] || lab_die "ceph processes left:$left"
[[ -z $(ls /sys/bus/rbd/devices 2>/dev/null) ]] || lab_die "rbd devices left"
lab_step "stop: no daemon, mount or mapping left"
