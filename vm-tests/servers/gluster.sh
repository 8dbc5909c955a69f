#!/bin/bash
# vm-tests/servers/gluster.sh — a real GlusterFS server (glusterd + bricks) on a loopback
# address, no systemd. Works the same in the lab guest and on a plain Debian host
# (FUSE works on the host, so host integration tests can mount its volumes).
#
# Usage (as root):
#   gluster.sh [OPTIONS] start      stop anything of a previous run in DIR, wipe DIR, start
#                                   glusterd bound to IP:24007, wait until its CLI answers,
#                                   write DIR/env
#   gluster.sh [OPTIONS] create-volume NAME [BRICKS]
#                                   create and start a distribute volume of BRICKS (1) bricks,
#                                   all on IP, in DIR/bricks/NAME-bN; ready when `volume status
#                                   --xml` shows every brick online with a port AND a test mount
#                                   writes, reads back (and finds the file on a brick) and
#                                   unmounts. Appends GLUSTER_VOLUME=NAME to DIR/env.
#   gluster.sh [OPTIONS] wait-ready [NAME…]
#                                   glusterd answers; each named volume as in create-volume
#   gluster.sh [OPTIONS] stop       unmount every glusterfs mount served from IP, kill glusterd,
#                                   its bricks and clients, and wait until they are gone
#   gluster.sh [OPTIONS] destroy    stop, then rm -rf DIR
#   gluster.sh [OPTIONS] brick-kill NAME   SIGKILL the volume's bricks, wait until they are gone
#                                   (a dead server for healing tests)
#   gluster.sh [OPTIONS] brick-start NAME  `volume start NAME force`, wait for bricks online
#   gluster.sh [OPTIONS] status     glusterd pid, volumes and their status
#   gluster.sh [OPTIONS] logs [N]   last N (40) lines of the server logs
# OPTIONS:
#   --dir D   state directory (default $GLUSTER_LAB_DIR or $LAB_STATE/gluster = /var/tmp/lab/gluster)
#   --ip A    address glusterd and the bricks use (default 127.0.0.2). Not 127.0.0.1:
#             gluster refuses "localhost" brick addresses, and glusterd must listen on
#             the bricks' address (they fetch their volfile from it).
#
# After start, `source DIR/env` gives (exported):
#   GLUSTER_DIR, GLUSTER_SERVER=127.0.0.2 (what `mount -t glusterfs $GLUSTER_SERVER:/VOL` uses),
#   GLUSTER_DEAD_SERVER=127.0.0.3 (nothing listens there: a dead primary for
#   backup-volfile-servers tests, e.g. -o backup-volfile-servers=$GLUSTER_SERVER with
#   $GLUSTER_DEAD_SERVER:/VOL as the source), GLUSTER_LOG_DIR (put client log-file= here),
#   and after create-volume GLUSTER_VOLUME (the last volume created).
#
# As a library (scenarios), like the other servers/ helpers:
#   . "$LAB_DIR/servers/gluster.sh"
#   lab_gluster_start [OPTIONS]            start, then source DIR/env
#   lab_gluster_volume NAME [BRICKS]       create-volume, then source DIR/env again
#   lab_gluster_stop                       stop
#   lab_gluster_client_pid DIR             the FUSE client process serving the mount at DIR
#   lab_gluster COMMAND [ARGS]             any command above for that server
#   lab_on_exit lab_gluster_stop           (what a scenario should do right after start)
#
# Fixed by glusterfs whatever DIR says, so one lab glusterd per machine: the CLI socket
# /var/run/glusterd.socket, brick pidfiles under /var/run/gluster/vols/, brick and
# default client logs under /var/log/glusterfs/. `start` refuses to run next to a
# glusterd it did not start.
#
# Processes: glusterd runs in the foreground (-N) under a reaper subshell, so it is
# never a zombie behind a stale pidfile. Bricks (glusterfsd) are forked by glusterd and
# end up children of PID 1, which reaps them late on the host: a killed brick stays a
# zombie for 1–2 s and `volume start force` then does nothing ("discovered
# already-running brick"), so brick-start waits for killed bricks to disappear.
# Measured on this machine: start 0.4-1.4 s natively, 5.5 s in the TCG guest (55 s and
# 3-12 s natively before the gsyncd stub); create-volume incl. test mount 1-3.7 s
# natively, 7.5-8.5 s in the guest; the whole lab-gluster scenario 55 s in a guest, 13 s
# on the host.

if [[ ${BASH_SOURCE[0]} != "$0" ]]; then
  # sourced: define the library functions only
  _LAB_GLUSTER_SELF=$(readlink -f "${BASH_SOURCE[0]}")
  # shellcheck source=../lib/lab.sh
  . "$(dirname "$_LAB_GLUSTER_SELF")/../lib/lab.sh"
  _LAB_GLUSTER_OPTS=()
  _LAB_GLUSTER_DIR=""
  lab_gluster_start() {
    _LAB_GLUSTER_OPTS=("$@")
    _LAB_GLUSTER_DIR=${GLUSTER_LAB_DIR:-$LAB_STATE/gluster}
    while (($#)); do [[ $1 == --dir ]] && _LAB_GLUSTER_DIR=$2; shift; done
    "$_LAB_GLUSTER_SELF" "${_LAB_GLUSTER_OPTS[@]+"${_LAB_GLUSTER_OPTS[@]}"}" start || lab_die "gluster: start failed"
    # shellcheck disable=SC1091
    . "$_LAB_GLUSTER_DIR/env"
  }
  lab_gluster() { "$_LAB_GLUSTER_SELF" "${_LAB_GLUSTER_OPTS[@]+"${_LAB_GLUSTER_OPTS[@]}"}" "$@"; }
  lab_gluster_volume() {
    lab_gluster create-volume "$@" || lab_die "gluster: create-volume $* failed"
    # shellcheck disable=SC1091
    . "$_LAB_GLUSTER_DIR/env"
  }
  lab_gluster_stop() { lab_gluster stop; }
  # lab_gluster_client_pid DIR — the glusterfs client process that holds /dev/fuse for the
  # mount at DIR (exit 1 when there is none).
  lab_gluster_client_pid() {
    local p fd
    for p in $(pgrep -x glusterfs); do
      tr '\0' ' ' < "/proc/$p/cmdline" | grep -q " $1\( \|$\)" || continue
      for fd in /proc/"$p"/fd/*; do [[ $(readlink "$fd") == /dev/fuse ]] && { echo "$p"; return 0; }; done
    done
    return 1
  }
  return 0
fi
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib/lab.sh
. "$HERE/../lib/lab.sh"

G_IP=127.0.0.2
G_DEAD_IP=127.0.0.3
G_DIR=${GLUSTER_LAB_DIR:-$LAB_STATE/gluster}

usage() { sed -n '2,/^# Processes:/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

glog() { lab_log "gluster: $*"; }
gdie() {
  lab_log "gluster: FAILED: $*"
  gluster_dump_logs 30
  if [[ -d $G_DIR/log ]]; then
    mkdir -p "$LAB_OUT/gluster-logs"
    cp -a "$G_DIR/log/." /var/log/glusterfs/. "$LAB_OUT/gluster-logs/" 2>/dev/null || true
  fi
  lab_die "gluster: $* (logs: $G_DIR/log and /var/log/glusterfs, copied to $LAB_OUT/gluster-logs)"
}

# every CLI call bounded: with glusterd hung the CLI waits forever
GL() { timeout -k 5 120 gluster --mode=script "$@"; }


glusterd_pid() {
  local p
  [[ -s $G_DIR/run/glusterd.pid ]] || return 1
  p=$(cat "$G_DIR/run/glusterd.pid")
  # (through unshare+sh the recorded pid becomes glusterd by exec)
  [[ "$(cat "/proc/$p/comm" 2>/dev/null || true)" == glusterd ]] && lab_pid_alive "$p" || return 1
  echo "$p"
}

gluster_dump_logs() {
  local n=${1:-40} f
  for f in "$G_DIR"/log/*.log "$G_DIR"/log/*.out /var/log/glusterfs/bricks/*.log; do
    [[ -s $f ]] || continue
    printf '%s\n' "----- tail -$n $f" >&2
    tail -n "$n" "$f" >&2 || true
  done
  return 0
}

# pids of gluster processes (bricks, clients, self-heal…) that belong to this server:
# their command line names our address or our directory
our_gluster_pids() {
  local p cmd
  for p in $(pgrep -x glusterfsd || true) $(pgrep -x glusterfs || true); do
    cmd=$(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null || true)
    [[ $cmd == *"$G_DIR/"* || $cmd == *"--volfile-server=$G_IP "* || $cmd == *"-s $G_IP "* ]] || continue
    lab_pid_alive "$p" && echo "$p"
  done
  return 0
}

wait_gone() {   # PID… : wait up to 30 s until every PID has exited (zombies count as gone)
  local p i
  for p in "$@"; do
    for i in $(seq 1 300); do lab_pid_alive "$p" || break; sleep 0.1; done
    lab_pid_alive "$p" && gdie "process $p ($(cat "/proc/$p/comm" 2>/dev/null || true)) did not exit"
  done
  return 0
}

# wait until /proc/PID is gone for good (reaped): needed before `volume start force`
wait_reaped() {
  local p i
  for p in "$@"; do
    for i in $(seq 1 300); do [[ -e /proc/$p ]] || break; sleep 0.1; done
    [[ -e /proc/$p ]] && gdie "pid $p is still not reaped after 30 s (zombie of PID 1?)"
  done
  return 0
}

ensure_fuse() { [[ -e /dev/fuse ]] || modprobe fuse || gdie "no /dev/fuse and modprobe fuse failed"; }

write_env() {
  cat > "$G_DIR/env" <<EOF
# written by vm-tests/servers/gluster.sh; source it
export GLUSTER_DIR=$G_DIR
export GLUSTER_SERVER=$G_IP
export GLUSTER_DEAD_SERVER=$G_DEAD_IP
export GLUSTER_LOG_DIR=$G_DIR/log
EOF
  printf 'G_IP=%s\n' "$G_IP" > "$G_DIR/lab.settings"
}

cmd_start() {
  lab_require_root
  local t0 p
  t0=$(date +%s.%N)
  command -v glusterd >/dev/null || lab_die "gluster: glusterd not installed (vm-tests/image/packages/gluster.list)"
  [[ -d $G_DIR/run ]] && cmd_stop
  for p in $(pgrep -x glusterd || true); do
    lab_pid_alive "$p" || continue
    lab_die "gluster: a glusterd this helper did not start is running (pid $p); its CLI socket /var/run/glusterd.socket is shared: stop it first"
  done
  rm -rf "$G_DIR"
  mkdir -p "$G_DIR"/{glusterd,log,run,bricks,mnt}
  cat > "$G_DIR/glusterd.vol" <<EOF
volume management
    type mgmt/glusterd
    option working-directory $G_DIR/glusterd
    option transport-type socket
    option transport.socket.bind-address $G_IP
    option transport.socket.listen-port 24007
    option transport.socket.keepalive-time 10
    option transport.socket.keepalive-interval 2
    option transport.socket.read-fail-log off
    option ping-timeout 0
    option event-threads 1
    option max-port 60999
end-volume
EOF
  write_env
  # glusterd's init runs the geo-replication helper gsyncd (a python program) about a
  # dozen times (--version, --config-set…): 3-12 s natively, ~55 s under TCG. The lab
  # never uses geo-replication, so glusterd runs in a private mount namespace where
  # gsyncd is a stub that only answers --version (bricks it forks inherit that view;
  # nothing else changes). Without unshare rights, plain glusterd (slow start).
  local gsyncd launcher=()
  gsyncd=$(ls /usr/lib/*/glusterfs/gsyncd /usr/libexec/glusterfs/gsyncd 2>/dev/null | head -n 1 || true)
  if [[ -n $gsyncd ]] && unshare -m --propagation private true 2>/dev/null; then
    printf '#!/bin/sh\n# stub for gsyncd (geo-replication), see vm-tests/servers/gluster.sh\necho "gsyncd (stub)"\n' > "$G_DIR/gsyncd-stub"
    chmod 755 "$G_DIR/gsyncd-stub"
    launcher=(unshare -m --propagation private sh -c 'mount --bind "$1" "$2" && shift 2 && exec "$@"' sh "$G_DIR/gsyncd-stub" "$gsyncd")
  else
    glog "no private mount namespace: glusterd runs the real gsyncd at start (slow)"
  fi
  (
    trap '' HUP
    "${launcher[@]}" glusterd -N -f "$G_DIR/glusterd.vol" -l "$G_DIR/log/glusterd.log" -L INFO \
      </dev/null >>"$G_DIR/log/glusterd.out" 2>&1 &
    echo $! > "$G_DIR/run/glusterd.pid"
    rc=0; wait $! || rc=$?
    echo "$rc" > "$G_DIR/run/glusterd.exit"
  ) </dev/null >/dev/null 2>&1 &
  local i
  for i in $(seq 1 100); do [[ -s $G_DIR/run/glusterd.pid ]] && break; sleep 0.05; done
  glog "started glusterd (pid $(cat "$G_DIR/run/glusterd.pid" 2>/dev/null || echo ?)) on $G_IP:24007"
  wait_glusterd 60
  glog "glusterd ready in $(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.1f", a - b }') s; env: $G_DIR/env"
}

wait_glusterd() {
  local secs=${1:-60} deadline
  deadline=$(( $(date +%s) + secs ))
  while :; do
    [[ -e $G_DIR/run/glusterd.exit ]] && gdie "glusterd exited (status $(cat "$G_DIR/run/glusterd.exit"))"
    if ss -Hltn "( sport = :24007 )" 2>/dev/null | grep -q "$G_IP:24007" \
       && timeout -k 2 10 gluster --mode=script pool list >/dev/null 2>&1; then
      return 0
    fi
    (( $(date +%s) < deadline )) || gdie "glusterd not answering on $G_IP:24007 within ${secs}s"
    sleep 0.2
  done
}

# every brick of VOL online with a port, per `volume status --xml` (the plain output
# wraps long brick paths)
bricks_online() {
  local xml
  xml=$(timeout -k 2 30 gluster --mode=script volume status "$1" --xml 2>/dev/null) || return 1
  # one tag per line in gluster's XML; awk, not python (an interpreter start per poll
  # costs seconds under TCG)
  printf '%s\n' "$xml" | awk -v want="$2" '
    /<node>/ { path = ""; st = ""; port = "" }
    /<path>/ { path = $0; sub(/.*<path>/, "", path); sub(/<\/path>.*/, "", path) }
    /<status>/ { st = $0; gsub(/[^0-9]/, "", st) }
    /<port>/ { port = $0; sub(/.*<port>/, "", port); sub(/<\/port>.*/, "", port) }
    /<\/node>/ { if (path ~ /^\//) { n++; if (st == "1" && port ~ /^[1-9][0-9]*$/) ok++ } }
    END { exit !(n == want && ok == want) }'
}

volume_bricks() { ls -d "$G_DIR/bricks/$1"-b* 2>/dev/null | wc -l; }

wait_volume() {
  local vol=$1 secs=${2:-60} n deadline m f
  n=$(volume_bricks "$vol")
  (( n > 0 )) || gdie "no bricks of volume $vol in $G_DIR/bricks"
  deadline=$(( $(date +%s) + secs ))
  until bricks_online "$vol" "$n"; do
    (( $(date +%s) < deadline )) || { GL volume status "$vol" >&2 || true; gdie "bricks of $vol not online within ${secs}s"; }
    sleep 0.2
  done
  # a real client round trip: mount, write, read back, find it on a brick, unmount
  ensure_fuse
  m=$G_DIR/mnt/ready-$vol
  mkdir -p "$m"
  f=ready-probe-$$
  lab_with_deadline 60 mount -t glusterfs -o "log-file=$G_DIR/log/client-ready-$vol.log" "$G_IP:/$vol" "$m" \
    || gdie "test mount of $G_IP:/$vol failed (log: $G_DIR/log/client-ready-$vol.log)"
  if ! { echo "$vol" | lab_with_deadline 30 tee "$m/$f" >/dev/null && [[ "$(lab_with_deadline 30 cat "$m/$f")" == "$vol" ]]; }; then
    lab_with_deadline 30 umount -l "$m" || true
    gdie "write/read through the test mount of $vol failed"
  fi
  ls "$G_DIR/bricks/$vol"-b*/data/"$f" >/dev/null 2>&1 || { lab_with_deadline 30 umount -l "$m" || true; gdie "probe file not on any brick of $vol"; }
  lab_with_deadline 30 rm -f "$m/$f"
  lab_with_deadline 30 umount "$m" || gdie "umount of the test mount failed"
  glog "volume $vol: $n brick(s) online, test mount wrote and read back"
}

cmd_create_volume() {
  local vol=$1 n=${2:-1} i bricks=() t0
  t0=$(date +%s.%N)
  glusterd_pid >/dev/null || gdie "glusterd is not running (start first)"
  [[ $n =~ ^[1-9][0-9]*$ ]] || lab_die "gluster: BRICKS must be a positive number"
  for ((i = 1; i <= n; i++)); do
    mkdir -p "$G_DIR/bricks/$vol-b$i"
    bricks+=("$G_IP:$G_DIR/bricks/$vol-b$i/data")
  done
  GL volume create "$vol" "${bricks[@]}" force >/dev/null || gdie "volume create $vol failed"
  GL volume start "$vol" >/dev/null || gdie "volume start $vol failed"
  wait_volume "$vol" 60
  echo "export GLUSTER_VOLUME=$vol" >> "$G_DIR/env"
  glog "volume $vol ready in $(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.1f", a - b }') s: mount -t glusterfs $G_IP:/$vol DIR"
}

brick_pids() {   # VOL -> pids of its bricks (from glusterd's pidfiles, verified)
  local f p
  for f in /var/run/gluster/vols/"$1"/*.pid; do
    [[ -s $f ]] || continue
    p=$(cat "$f")
    [[ "$(cat "/proc/$p/comm" 2>/dev/null || true)" == glusterfsd ]] && lab_pid_alive "$p" && echo "$p"
  done
  return 0
}

cmd_brick_kill() {
  local vol=$1 pids
  pids=$(brick_pids "$vol")
  [[ -n $pids ]] || gdie "no running brick of $vol"
  # shellcheck disable=SC2086
  kill -KILL $pids
  # shellcheck disable=SC2086
  wait_reaped $pids
  glog "killed brick(s) of $vol: $(echo $pids)"
}

cmd_brick_start() {
  local vol=$1 f p
  # a brick that died but is not reaped yet makes `start force` a silent no-op
  for f in /var/run/gluster/vols/"$vol"/*.pid; do
    [[ -s $f ]] || continue
    p=$(cat "$f")
    [[ "$(cat "/proc/$p/comm" 2>/dev/null || true)" == glusterfsd ]] && wait_reaped "$p"
  done
  GL volume start "$vol" force >/dev/null || gdie "volume start $vol force failed"
  local deadline=$(( $(date +%s) + 60 ))
  until bricks_online "$vol" "$(volume_bricks "$vol")"; do
    (( $(date +%s) < deadline )) || gdie "bricks of $vol not back online within 60 s"
    sleep 0.2
  done
  glog "brick(s) of $vol online again"
}

cmd_stop() {
  [[ -d $G_DIR/run ]] || return 0
  local src m fstype p pids=()
  # 1. client mounts served from our address (also the backup-volfile-servers ones whose
  #    primary was the dead address)
  while read -r src m fstype _; do
    [[ $fstype == fuse.glusterfs ]] || continue
    [[ $src == "$G_IP:"* || $src == "$G_DEAD_IP:"* || $m == "$G_DIR/"* ]] || continue
    m=$(printf '%b' "$m")
    glog "umount $src from $m"
    timeout -k 2 20 umount "$m" 2>/dev/null || timeout -k 2 10 umount -l "$m" || true
  done < <(tac /proc/mounts)
  # 2. glusterd first (so it restarts nothing), then bricks and leftover clients
  if p=$(glusterd_pid); then
    kill -KILL "$p" 2>/dev/null || true
    local i
    for i in $(seq 1 300); do [[ -e $G_DIR/run/glusterd.exit ]] && break; lab_pid_alive "$p" || break; sleep 0.1; done
    lab_pid_alive "$p" && gdie "glusterd (pid $p) did not exit"
    glog "stopped glusterd (pid $p)"
  fi
  mapfile -t pids < <(our_gluster_pids)
  if ((${#pids[@]})); then
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait_gone "${pids[@]}"
    glog "killed bricks/clients: ${pids[*]}"
  fi
  rm -f "$G_DIR/run/glusterd.pid"
}

cmd_status() {
  local p v
  if p=$(glusterd_pid); then echo "glusterd: running pid $p on $G_IP:24007"; else echo "glusterd: not running"; return 0; fi
  for v in $(GL volume list 2>/dev/null); do
    echo "volume $v: bricks online: $(bricks_online "$v" "$(volume_bricks "$v")" && echo yes || echo no)"
  done
  GL volume status || true
}

# ---------------------------------------------------------------- main
ARGS=()
while (($#)); do
  case $1 in
    --dir) G_DIR=$2; shift 2;;
    --ip) G_IP=$2; shift 2;;
    -h|--help) usage;;
    *) ARGS+=("$1"); shift;;
  esac
done
set -- "${ARGS[@]+"${ARGS[@]}"}"
(($#)) || usage
G_DIR=$(realpath -m "$G_DIR")
if [[ $1 != start && -s $G_DIR/lab.settings ]]; then
  # shellcheck disable=SC1091
  . "$G_DIR/lab.settings"
fi
case $G_IP in 127.0.0.1|localhost) lab_die "gluster: glusterd refuses 127.0.0.1/localhost bricks; use e.g. 127.0.0.2";; esac

cmd=$1; shift
case $cmd in
  start) cmd_start ;;
  create-volume) [[ $# -ge 1 ]] || usage; cmd_create_volume "$@" ;;
  wait-ready)
    wait_glusterd 60
    for v in "$@"; do wait_volume "$v" 60; done ;;
  stop) cmd_stop ;;
  destroy) cmd_stop; rm -rf "$G_DIR" ;;
  brick-kill) [[ $# -eq 1 ]] || usage; cmd_brick_kill "$1" ;;
  brick-start) [[ $# -eq 1 ]] || usage; cmd_brick_start "$1" ;;
  status) cmd_status ;;
  logs) gluster_dump_logs "${1:-40}" ;;
  *) usage ;;
esac
