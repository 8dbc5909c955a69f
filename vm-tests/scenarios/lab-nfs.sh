#!/bin/bash
# Lab self-test: the NFS server helper serves v3, v4.0, v4.1 and v4.2 over loopback.
# vm: moor=no timeout=240
set -euo pipefail
. "$LAB_DIR/lib/lab.sh"
. "$LAB_DIR/servers/nfs-server.sh"

lab_nfs_server
lab_on_exit lab_nfs_server_stop
for vers in 4.2 4.1 4.0 3; do
  mnt=/mnt/nfs-$vers
  mkdir -p "$mnt"
  lab_run lab_with_deadline 60 mount -t nfs -o "vers=$vers,timeo=50,retrans=2" "$LAB_NFS_SERVER:$LAB_NFS_EXPORT" "$mnt"
  lab_on_exit "umount -l $mnt"
  lab_assert_mounted "$mnt" "$( [[ $vers == 3 ]] && echo nfs || echo nfs4 )"
  lab_assert_file_eq "$mnt/seed" "$LAB_NFS_SEED"
  dd if=/dev/urandom of="$mnt/file-$vers" bs=1M count=4 status=none
  sync
  cmp "$mnt/file-$vers" "$LAB_NFS_EXPORT/file-$vers" || lab_die "v$vers: data differs on the server"
  # A lock round trip: NLM for v3, the protocol's own locks for v4.
  lab_with_deadline 30 flock "$mnt/file-$vers" true || lab_die "v$vers: flock failed"
  lab_run lab_with_deadline 30 umount "$mnt"
  lab_step "NFS v$vers: mount, read seed, write, verify on the server, lock, unmount"
done
