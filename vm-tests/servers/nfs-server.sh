#!/bin/bash
# nfs-server.sh — the kernel NFS server (nfs-kernel-server) for NFSv3 and v4.x,
# shared by every scenario and the Vagrant storage box.
#
# As a library (scenarios):
#   . "$LAB_DIR/servers/nfs-server.sh"
#   lab_nfs_server [NAME]         start the server (idempotent) and export
#                                 $LAB_NFS_ROOT/NAME (default NAME: export), seeded with
#                                 a file "seed" containing "moor-lab-nfs"
#   lab_nfs_export DIR [OPTIONS]  export one more directory (default options rw,…)
#   lab_nfs_server_stop           unexport everything, stop the daemons this helper started
# lab_nfs_server returns only when rpcbind lists NFS v3 and v4 and mountd, the
# export is visible through showmount, and the NFSv4 grace period is over (ended
# early, so v4 OPEN does not block for 10–90 s); otherwise it dies.
# It exports LAB_NFS_SERVER (address), LAB_NFS_EXPORT (path on the server),
# LAB_NFS_SEED (content of the seed file).
#
# As a command (Vagrant, by hand):  nfs-server.sh start [NAME]  |  nfs-server.sh stop
#
# Settings: LAB_NFS_ADDR (the address clients use, default 127.0.0.1),
# LAB_NFS_CLIENTS (who may mount, default the same address; e.g. 192.168.56.0/24),
# LAB_NFS_ROOT (default /srv/nfs).

_LAB_NFS_SELF=$(readlink -f "${BASH_SOURCE[0]}")
# shellcheck source=../lib/lab.sh
. "$(dirname "$_LAB_NFS_SELF")/../lib/lab.sh"

LAB_NFS_ADDR=${LAB_NFS_ADDR:-127.0.0.1}
LAB_NFS_CLIENTS=${LAB_NFS_CLIENTS:-$LAB_NFS_ADDR}
LAB_NFS_ROOT=${LAB_NFS_ROOT:-/srv/nfs}
_LAB_NFS_EXPORTS=/etc/exports.d/moor-lab.exports
_LAB_NFS_PIDS=$LAB_STATE/nfs/pids

# _lab_nfs_daemon NAME CMD… — start NAME unless already running; remember that we did.
_lab_nfs_daemon() {
  local name=$1; shift
  pgrep -x "$name" >/dev/null && return 0
  "$@" || lab_die "$name failed to start: $*"
  lab_wait_for 10 "$name running" pgrep -x "$name"
  echo "$name" >> "$_LAB_NFS_PIDS"
}

lab_nfs_export() {
  local dir=$1 opts=${2:-rw,sync,no_subtree_check,no_root_squash,insecure} client
  mkdir -p "$dir" /etc/exports.d
  for client in $LAB_NFS_CLIENTS; do
    grep -qF "$dir $client(" "$_LAB_NFS_EXPORTS" 2>/dev/null || echo "$dir $client($opts)" >> "$_LAB_NFS_EXPORTS"
  done
  exportfs -ra || lab_die "exportfs -ra failed"
  lab_wait_for 20 "$dir in the export table" sh -c "exportfs -v | grep -qF '$dir'"
}

lab_nfs_server() {
  local name=${1:-export} threads
  lab_require_root
  lab_modprobe nfsd nfs nfsv3 nfsv4
  mkdir -p "$LAB_STATE/nfs" /var/lib/nfs/rpc_pipefs /var/lib/nfs/v4recovery /run/rpcbind
  mountpoint -q /proc/fs/nfsd || mount -t nfsd nfsd /proc/fs/nfsd || lab_die "cannot mount the nfsd filesystem"
  mountpoint -q /var/lib/nfs/rpc_pipefs || mount -t rpc_pipefs sunrpc /var/lib/nfs/rpc_pipefs \
    || lab_die "cannot mount rpc_pipefs"

  export LAB_NFS_SERVER=$LAB_NFS_ADDR LAB_NFS_EXPORT=$LAB_NFS_ROOT/$name LAB_NFS_SEED=moor-lab-nfs
  mkdir -p "$LAB_NFS_EXPORT"
  printf '%s\n' "$LAB_NFS_SEED" > "$LAB_NFS_EXPORT/seed"

  # rpcbind and statd are needed for v3 (MOUNT, NLM locking); v4 needs neither.
  _lab_nfs_daemon rpcbind rpcbind -w
  _lab_nfs_daemon rpc.statd rpc.statd --no-notify
  lab_nfs_export "$LAB_NFS_EXPORT"
  threads=$(cat /proc/fs/nfsd/threads 2>/dev/null || echo 0)
  if [[ $threads == 0 ]]; then
    # Short lease and grace periods: a lost client costs seconds, not 90. Locks
    # (NLM for v3 and v4 LOCK alike) wait for lockd's own grace period, which
    # rpc.nfsd --grace-time would set to 10 s: set the knobs directly instead, with
    # lockd's grace at its minimum (3 s, a multiple of nlm_timeout).
    lab_modprobe lockd
    printf 10 > /proc/fs/nfsd/nfsv4leasetime
    printf 10 > /proc/fs/nfsd/nfsv4gracetime
    printf 3 > /proc/sys/fs/nfs/nlm_timeout
    printf 3 > /proc/sys/fs/nfs/nlm_grace_period
    rpc.nfsd 8 || lab_die "rpc.nfsd failed"
    _LAB_NFS_STARTED=$(date +%s.%N)
  fi
  _lab_nfs_daemon rpc.mountd rpc.mountd

  lab_wait_for 20 "rpcbind to list nfs v3, v4 and mountd" sh -c \
    "rpcinfo -p '$LAB_NFS_ADDR' | awk '\$5 == \"nfs\" && \$2 == 3 { a = 1 } \$5 == \"nfs\" && \$2 == 4 { b = 1 } \$5 == \"mountd\" { c = 1 } END { exit !(a && b && c) }'"
  lab_wait_for 20 "showmount to list $LAB_NFS_EXPORT" sh -c "showmount -e '$LAB_NFS_ADDR' | grep -qF '$LAB_NFS_EXPORT '"
  # End the v4 grace period now; kernels without the knob fall back to waiting it out.
  if [[ -w /proc/fs/nfsd/v4_end_grace ]]; then
    printf Y > /proc/fs/nfsd/v4_end_grace || lab_log "could not end the NFSv4 grace period early"
  fi
  # lockd's grace period has no status file: wait out what is left of its 3 s, so the
  # first lock a scenario takes does not get NFS4ERR_GRACE and a long client backoff.
  if [[ -n ${_LAB_NFS_STARTED:-} ]]; then
    sleep "$(awk -v s="$_LAB_NFS_STARTED" -v n="$(date +%s.%N)" 'BEGIN { d = s + 3.5 - n; print (d > 0 ? d : 0) }')"
  fi
  lab_log "NFS server ready: $LAB_NFS_SERVER:$LAB_NFS_EXPORT (versions: $(cat /proc/fs/nfsd/versions))"
}

lab_nfs_server_stop() {
  local name
  exportfs -ua 2>/dev/null || true
  rm -f "$_LAB_NFS_EXPORTS"
  [[ -e /proc/fs/nfsd/threads ]] && rpc.nfsd 0 2>/dev/null
  if [[ -f $_LAB_NFS_PIDS ]]; then
    while read -r name; do pkill -x "$name" 2>/dev/null || true; done < "$_LAB_NFS_PIDS"
    rm -f "$_LAB_NFS_PIDS"
  fi
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  case ${1:-} in
    start) shift; lab_nfs_server "$@" >&2
           printf 'export LAB_NFS_SERVER=%q LAB_NFS_EXPORT=%q\n' "$LAB_NFS_SERVER" "$LAB_NFS_EXPORT" ;;
    stop) lab_nfs_server_stop ;;
    *) echo "usage: $0 start [NAME] | stop" >&2; exit 2 ;;
  esac
fi
