#!/bin/bash
# Lab self-test: servers/gluster.sh starts glusterd with 1- and 2-brick volumes; kubelet-style mounts (backup-volfile-servers with a dead primary, ro, auto_unmount), brick death and recovery, clean teardown.
# vm: mem=1536 cpus=2 moor=no timeout=300
set -euo pipefail
. "$LAB_DIR/lib/lab.sh"
. "$LAB_DIR/servers/gluster.sh"

lab_gluster_start
lab_on_exit lab_gluster_stop
lab_gluster_volume vol1
lab_gluster_volume vol2 2
lab_step "glusterd on $GLUSTER_SERVER with vol1 (1 brick) and vol2 (2 bricks), both ready"

m1=/mnt/gluster-1 m2=/mnt/gluster-2
mkdir -p "$m1" "$m2"
# kubelet's in-tree glusterfs mount: backup-volfile-servers, log-file, log-level; the
# listed primary is dead, the backup serves
lab_run lab_with_deadline 60 mount -t glusterfs \
  -o "backup-volfile-servers=$GLUSTER_SERVER,log-file=$GLUSTER_LOG_DIR/client-1.log,log-level=ERROR" \
  "$GLUSTER_DEAD_SERVER:/vol1" "$m1"
lab_on_exit "umount -l $m1"
lab_assert_mounted "$m1" fuse.glusterfs
echo gluster-data > "$m1/f"
lab_run lab_with_deadline 60 mount -t glusterfs -o ro "$GLUSTER_SERVER:/vol1" "$m2"
lab_assert_file_eq "$m2/f" gluster-data
lab_assert_cmd_fails lab_with_deadline 20 touch "$m2/g"
lab_run umount "$m2"
lab_step "vol1: mount via backup volfile server, write; ro mount reads it and refuses writes"

lab_run lab_with_deadline 60 mount -t glusterfs "$GLUSTER_SERVER:/vol2" "$m2"
for i in 1 2 3 4 5 6 7 8; do echo "$i" > "$m2/file$i"; done
n=$(find "$GLUSTER_DIR"/bricks/vol2-b1/data "$GLUSTER_DIR"/bricks/vol2-b2/data -maxdepth 1 -name 'file*' | wc -l)
lab_assert_eq "$n" 8 "files on vol2's two bricks"
lab_run umount "$m2"
lab_step "vol2: 8 files distributed over 2 bricks"

# server death under a live mount: statfs fails with ENOTCONN, the client reconnects
# by itself once the brick is back
lab_gluster brick-kill vol1
if lab_with_deadline 20 stat -f "$m1" >/dev/null 2>&1; then lab_die "statfs on $m1 succeeded with its brick dead"; fi
lab_gluster brick-start vol1
lab_wait_for 30 "vol1 client reconnects" lab_with_deadline 10 cat "$m1/f"
lab_assert_file_eq "$m1/f" gluster-data
lab_step "brick killed: ENOTCONN; brick restarted: the same mount works again"

# auto_unmount: killing the FUSE server process removes the mount
lab_run lab_with_deadline 60 mount -t glusterfs -o auto_unmount "$GLUSTER_SERVER:/vol1" "$m2"
fuse_pid=$(lab_gluster_client_pid "$m2") || lab_die "no glusterfs process holds /dev/fuse for $m2"
kill -9 "$fuse_pid"
lab_wait_for 20 "auto_unmount removes $m2" bash -c "! grep -q ' $m2 ' /proc/mounts"
lab_step "auto_unmount: client killed, mount removed by its watcher"

lab_gluster_stop
if grep -q ' fuse.glusterfs ' /proc/mounts; then lab_die "glusterfs mounts left: $(grep glusterfs /proc/mounts)"; fi
left=""
for p in $(pgrep -x glusterd || true) $(pgrep -x glusterfsd || true) $(pgrep -x glusterfs || true); do
  lab_pid_alive "$p" && left+=" $p"
done
[[ -z $left ]] || lab_die "gluster processes left:$left"
lab_step "stop: no gluster mount or process left"
