#!/bin/bash
# Lab self-test: the guest has Debian's kernel and the modules moor's drivers need.
# vm: moor=no timeout=180 disks=1
set -euo pipefail
. "$LAB_DIR/lib/lab.sh"

lab_step "kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ { print int($2/1024) }' /proc/meminfo) MiB"
for m in iscsi_tcp target_core_mod iscsi_target_mod target_core_file nfs nfsd rbd ceph \
         dm_multipath scsi_debug loop fuse xfs btrfs; do
  lab_modprobe "$m"
done
lab_step "kernel modules for every driver load"

lab_assert_cmd_fails touch "$LAB_DIR/should-be-read-only"
echo ok > "$LAB_OUT/probe" && lab_assert_file_eq "$LAB_OUT/probe" ok
rm -f "$LAB_OUT/probe"
lab_step "share is read-only, results dir is writable"

lab_assert_mounted / ext4
lab_assert_mounted /sys/kernel/config configfs
# udev is live: a scsi_debug disk gets its persistent links.
modprobe -r scsi_debug
modprobe scsi_debug dev_size_mb=16
lab_wait_for 20 "scsi_debug by-id link" sh -c 'ls /dev/disk/by-id/ | grep -q scsi'
lab_step "udev creates /dev/disk links for hot-plugged disks"

# disks=1 in the header: one blank 1 GiB virtio disk.
lab_assert_eq "$(blockdev --getsize64 /dev/vdb)" 1073741824 "size of /dev/vdb"
lab_assert_eq "$(blkid -p /dev/vdb >/dev/null 2>&1; echo $?)" 2 "blkid -p on the blank disk (2 = nothing found)"
lab_step "the header's extra disk is /dev/vdb, 1 GiB, blank"
