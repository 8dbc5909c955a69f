#!/bin/bash
# vm-tests/servers/ceph.sh — a real single-node Ceph cluster (pacific) for the lab:
# mon, mgr, one OSD, one MDS, cephx on, everything on one loopback address, no
# systemd. Works in the lab guest (where the kernel clients `rbd map` and
# `mount -t ceph` exist) and on a plain Debian host (ceph-fuse / rbd-fuse only).
#
# Usage (as root):
#   ceph.sh [OPTIONS] start         wipe DIR, bootstrap a fresh cluster, wait until it is
#                                   really ready (see wait-ready), write DIR/env
#   ceph.sh [OPTIONS] wait-ready [SECS]
#                                   wait (default 240 s) until: mon in quorum, mgr available,
#                                   osd.0 up+in, every PG active+clean, MDS up:active,
#                                   HEALTH_OK, and an object write+read in pool rbd works.
#                                   Fails loudly (status, health detail, log tails) if not.
#   ceph.sh [OPTIONS] stop          unmount/unmap every client of this cluster (kernel cephfs,
#                                   krbd, ceph-fuse, rbd-fuse), then kill the daemons and wait
#                                   until they are reaped. Keeps DIR (restart needs it).
#   ceph.sh [OPTIONS] destroy       stop, then rm -rf DIR
#   ceph.sh [OPTIONS] restart       stop the daemons, start them again on DIR's state, wait-ready
#                                   (needs --store bluestore: memstore loses its data)
#   ceph.sh [OPTIONS] daemon-stop NAME | daemon-start NAME
#                                   SIGKILL (and reap) or start one daemon: mon.a mgr.x osd.0 mds.a
#   ceph.sh [OPTIONS] fs-mkdir PATH create a directory in the CephFS (admin ceph-fuse mount)
#   ceph.sh [OPTIONS] fs-authorize USER PATH [rw|r]
#                                   `ceph fs authorize` a client for PATH (created if missing);
#                                   writes DIR/keys/client.USER.{keyring,secret}
#   ceph.sh [OPTIONS] fs-evict USER evict (and blocklist) every MDS session of client.USER
#   ceph.sh [OPTIONS] status        ceph -s and the daemons' pids
#   ceph.sh [OPTIONS] logs [N]      last N (40) lines of every daemon log
# OPTIONS:
#   --dir D        state directory (default $CEPH_LAB_DIR or $LAB_STATE/ceph = /var/tmp/lab/ceph)
#   --ip A         address for every daemon (default 127.0.0.1); one cluster per address
#   --store S      memstore (default: fastest, state in the OSD's RAM, lost on OSD restart)
#                  or bluestore (a sparse 4 GiB file in DIR; survives restart)
#   --no-fs        no MDS/CephFS (saves a daemon and ~10 s under TCG)
#   --fast         start/restart/wait-ready return once the data path works (mon quorum,
#                  osd up+in, rbd pool initialised, probe object written and read back,
#                  MDS up:active, CephFS subdir created), without waiting for the mgr to
#                  finish loading (PG stats, HEALTH_OK): saves ~30-45 s under TCG. A later
#                  `ceph.sh wait-ready` does the full check.
#
# After `start`, `source DIR/env` gives (all exported):
#   CEPH_DIR CEPH_CONF CEPH_FSID CEPH_IP
#   CEPH_MON=IP:6789 (msgr v1, what the kernel clients use)   CEPH_MON_V2=IP:3300
#   CEPH_ADMIN_KEYRING CEPH_ADMIN_SECRET_FILE   (client.admin, all caps)
#   CEPH_RBD_POOL=rbd (initialised)   CEPH_RBD_USER=rbd (id, i.e. client.rbd)
#   CEPH_RBD_KEYRING CEPH_RBD_SECRET_FILE      (mon 'profile rbd', osd/mgr 'profile rbd pool=rbd')
#   CEPH_FS_NAME=cephfs   CEPH_FS_SUBDIR=/volumes/moor (exists)   CEPH_FS_USER=fs
#   CEPH_FS_KEYRING CEPH_FS_SECRET_FILE        (`ceph fs authorize cephfs client.fs /volumes/moor rw`)
#   CEPH_STORE
# With CEPH_CONF exported the ceph/rbd/rados/ceph-fuse CLIs find the cluster and the admin
# key by themselves; `--id rbd` / `--id fs` pick the restricted keys (the keyring path in
# ceph.conf is DIR/keys/$name.keyring). Examples:
#   rbd create rbd/img --size 64M --image-feature layering; rbd map rbd/img --id rbd
#   mount -t ceph "$CEPH_MON:$CEPH_FS_SUBDIR" /mnt -o name=fs,secretfile=$CEPH_FS_SECRET_FILE
#   ceph-fuse --id fs -r "$CEPH_FS_SUBDIR" /mnt
# Every ceph CLI call should be bounded: use `timeout 30 ceph --connect-timeout 10 ...`.
#
# As a library (scenarios), like the other servers/ helpers:
#   . "$LAB_DIR/servers/ceph.sh"
#   lab_ceph_start [OPTIONS]     `ceph.sh OPTIONS start`, then sources DIR/env into the shell
#   lab_ceph_stop                `ceph.sh stop` for that cluster
#   lab_ceph COMMAND [ARGS]      any command above for that cluster (fs-evict, restart, …)
#   lab_on_exit lab_ceph_stop    (what a scenario should do right after lab_ceph_start)
#
# Processes: each daemon runs in the foreground (`ceph-X -f`) under a small reaper
# subshell that waits for it and records its exit status in DIR/run/NAME.exit, so a
# stopped daemon is never left as a zombie behind a stale pidfile (PID 1 reaps late on
# the host). Logs: DIR/log/NAME.log (ceph's own) and DIR/log/NAME.out (stdout/stderr).
#
# ---------------------------------------------------------------------------------
# PLACEMENT — decision: the cluster runs INSIDE the guest, started by this script in
# each Ceph scenario. Measured 2026-11-23 on this 2-core machine (qemu TCG, no usable
# KVM), times from `start` to "cluster ready" (full readiness unless noted):
#   host, natively (memstore)            5.2-5.9 s quiet; 10.9-12.8 s with cargo builds
#                                        running (load 9-13); --fast: 5.4 s
#   host, bluestore start / restart      12.5 s / 15.4 s (loaded host)
#   guest, TCG 2 vCPU 3 GiB (memstore)   ~31 s with a lightly loaded host; 49 s at host
#                                        load ~4.5 (data path, what --fast waits for: ~19 s);
#                                        77-86 s at host load 9-13 (boot itself 3x slower)
#   the long pole in the guest is the mgr loading its python modules (always-on ones:
#   the rest are disabled below); mon, OSD, MDS, pool init and the subdir are done
#   while it loads. Memory: ~400 MB RSS natively (mgr ~300 MB).
#   lab-ceph scenario end to end (boot, cluster, RBD + CephFS checks, teardown):
#   123 s at host load ~4.5, 190-240 s at load 9-13.
# Host placement (cluster on the host's 127.0.0.1, guest through qemu user-mode
# networking) was measured and does not work as is: the guest reaches the host mon
# TCP port (10.0.2.2:6789 -> host 127.0.0.1:6789; banner "ceph v027" in 0.3 s), but
# every Ceph client checks the peer's identity: `ceph -s` from the guest loops on
#   handle_server_banner_and_identify connect claims to be v1:127.0.0.1:6789/0
#   not v1:10.0.2.2:6789/0
# and times out (same with msgr v2 on 3300; the kernel's libceph checks too). Even past
# the mon, the maps advertise 127.0.0.1:68xx for the OSD/MDS, which in the guest is the
# guest's own loopback: `rados ls` and krbd `rbd map` time out. Ceph cannot advertise
# an address it does not bind (public_bind_addr exists for mons only), the host has no
# address the guest can reach directly, and NAT tricks inside the guest (DNAT of
# 127.0.0.1:6789/3300/6800-7300 with route_localnet, or a userspace proxy on the guest's
# loopback) would be fragile and would share one cluster's state (blocklists, killed
# daemons) across scenarios. Inside the guest every address is simply 127.0.0.1, each
# scenario gets a fresh cluster, and the ~20-30 s (quiet host) is affordable in CI.
# (qemu's guestfwd=tcp:...-tcp:127.0.0.1:PORT does not help either: that chardev is a
# single connection opened at qemu start, not a per-connection forward.)
# ---------------------------------------------------------------------------------

if [[ ${BASH_SOURCE[0]} != "$0" ]]; then
  # sourced: define the library functions only
  _LAB_CEPH_SELF=$(readlink -f "${BASH_SOURCE[0]}")
  # shellcheck source=../lib/lab.sh
  . "$(dirname "$_LAB_CEPH_SELF")/../lib/lab.sh"
  _LAB_CEPH_OPTS=()
  lab_ceph_start() {
    _LAB_CEPH_OPTS=()
    local dir=${CEPH_LAB_DIR:-$LAB_STATE/ceph} a
    for a in "$@"; do _LAB_CEPH_OPTS+=("$a"); done
    while (($#)); do [[ $1 == --dir ]] && dir=$2; shift; done
    "$_LAB_CEPH_SELF" "${_LAB_CEPH_OPTS[@]+"${_LAB_CEPH_OPTS[@]}"}" start || lab_die "ceph: start failed"
    # shellcheck disable=SC1091
    . "$dir/env"
  }
  lab_ceph() { "$_LAB_CEPH_SELF" "${_LAB_CEPH_OPTS[@]+"${_LAB_CEPH_OPTS[@]}"}" "$@"; }
  lab_ceph_stop() { lab_ceph stop; }
  return 0
fi
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib/lab.sh
. "$HERE/../lib/lab.sh"

PY=/usr/bin/python3          # Debian's python: has the rados/rbd bindings (not a pyenv shim)
CEPH_IP=127.0.0.1
CEPH_STORE=memstore
WITH_FS=1
FAST=0
CEPH_DIR=${CEPH_LAB_DIR:-$LAB_STATE/ceph}
DAEMONS_ALL=(mon.a mgr.x osd.0 mds.a)

usage() { sed -n '2,/^# ----/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# ---------------------------------------------------------------- small helpers
clog() { lab_log "ceph: $*"; }
cdie() {
  lab_log "ceph: FAILED: $*"
  ceph_dump_logs 30
  [[ -d $CEPH_DIR/log ]] && mkdir -p "$LAB_OUT" && cp -a "$CEPH_DIR/log" "$LAB_OUT/ceph-logs" 2>/dev/null
  lab_die "ceph: $* (all logs: $CEPH_DIR/log, copied to $LAB_OUT/ceph-logs)"
}

# Every CLI call is bounded: with the mon down `ceph` hangs forever otherwise.
C() { timeout -k 5 60 ceph --connect-timeout 15 "$@"; }

daemon_type() { echo "${1%%.*}"; }     # mon.a -> mon
daemon_id()   { echo "${1#*.}"; }      # mon.a -> a

# our pid for daemon NAME if it is still that daemon, else nothing
daemon_pid() {
  local f=$CEPH_DIR/run/$1.pid p
  [[ -s $f ]] || return 1
  p=$(cat "$f")
  [[ "$(cat "/proc/$p/comm" 2>/dev/null)" == "ceph-$(daemon_type "$1")" ]] && lab_pid_alive "$p" || return 1
  echo "$p"
}

# Start daemon NAME in the foreground under a reaper subshell (see header).
daemon_start() {
  local name=$1 type id
  type=$(daemon_type "$name"); id=$(daemon_id "$name")
  if daemon_pid "$name" >/dev/null; then cdie "$name is already running"; fi
  rm -f "$CEPH_DIR/run/$name.pid" "$CEPH_DIR/run/$name.exit"
  (
    trap '' HUP
    "ceph-$type" -f -i "$id" -c "$CEPH_DIR/ceph.conf" </dev/null >>"$CEPH_DIR/log/$name.out" 2>&1 &
    echo $! > "$CEPH_DIR/run/$name.pid"
    rc=0; wait $! || rc=$?
    echo "$rc" > "$CEPH_DIR/run/$name.exit"
  ) </dev/null >/dev/null 2>&1 &
  local i
  for i in $(seq 1 100); do [[ -s $CEPH_DIR/run/$name.pid ]] && break; sleep 0.05; done
  [[ -s $CEPH_DIR/run/$name.pid ]] || cdie "$name: no pid recorded"
  clog "started $name (pid $(cat "$CEPH_DIR/run/$name.pid"))"
}

# SIGKILL daemon NAME and wait until its reaper has collected it (no zombie left).
daemon_stop() {
  local name=$1 p i
  p=$(daemon_pid "$name") || { rm -f "$CEPH_DIR/run/$name.pid"; return 0; }
  kill -KILL "$p" 2>/dev/null || true
  for i in $(seq 1 1200); do
    # the reaper writes .exit after wait(); if the reaper itself is gone (killed
    # with our caller's process group), fall back to /proc
    [[ -e $CEPH_DIR/run/$name.exit ]] && break
    lab_pid_alive "$p" || break
    sleep 0.05
  done
  lab_pid_alive "$p" && cdie "$name (pid $p) did not die within 60 s of SIGKILL (D state?): $(cat /proc/"$p"/wchan 2>/dev/null || true)"
  rm -f "$CEPH_DIR/run/$name.pid"
  clog "stopped $name (pid $p)"
}

ceph_dump_logs() {
  local n=${1:-40} f
  [[ -d $CEPH_DIR/log ]] || return 0
  for f in "$CEPH_DIR"/log/*.log "$CEPH_DIR"/log/*.out; do
    [[ -s $f ]] || continue
    printf '%s\n' "----- tail -$n $f" >&2
    tail -n "$n" "$f" >&2 || true
  done
  for f in "$CEPH_DIR"/run/*.exit; do
    [[ -e $f ]] && printf '%s exited with status %s\n' "$(basename "$f" .exit)" "$(cat "$f")" >&2
  done
  return 0
}

new_uuid() { cat /proc/sys/kernel/random/uuid; }
# A cephx secret without a process per key (ceph-authtool costs ~0.5 s each under TCG):
# base64 of  u16 type=1 (AES) | u32 sec | u32 nsec | u16 len=16 | 16 random bytes
gen_key() { { printf '\001\000\000\000\000\000\000\000\000\000\020\000'; head -c 16 /dev/urandom; } | base64 -w0; }

# keyring ENTITY KEY CAPS... (caps as "mon" "allow *" pairs) -> DIR/keys/ENTITY.keyring
write_keyring() {
  local entity=$1 key=$2; shift 2
  local f=$CEPH_DIR/keys/$entity.keyring
  {
    printf '[%s]\n\tkey = %s\n' "$entity" "$key"
    while (($#)); do printf '\tcaps %s = "%s"\n' "$1" "$2"; shift 2; done
  } > "$f"
  chmod 600 "$f"
  printf '%s' "$key" > "$CEPH_DIR/keys/$entity.secret"
  chmod 600 "$CEPH_DIR/keys/$entity.secret"
}

write_conf() {
  local fsid=$1 ip=$CEPH_IP d=$CEPH_DIR
  cat > "$d/ceph.conf" <<EOF
# written by vm-tests/servers/ceph.sh
[global]
fsid = $fsid
mon host = [v2:$ip:3300,v1:$ip:6789]
mon initial members = a
public addr = $ip
public network = $ip/32
ms bind ipv4 = true
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = $d/keys/\$name.keyring
run dir = $d/run
pid file = $d/run/\$name.daemon.pid
admin socket = $d/run/\$name.asok
log file = $d/log/\$name.log
crash dir = $d/crash
log to stderr = false
err to stderr = false
# single node, size 1, small PG counts: fewer PGs = faster peering under TCG
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon data avail warn = 1
mon data avail crit = 0
# faster map propagation and state reporting (defaults are 1 s / 5 s / 5 s)
paxos propose interval = 0.1
mgr tick period = 1
mgr stats period = 1
mon tick interval = 1
[client]
# one admin socket per client process, or rbd-fuse/ceph-fuse/rbd collide
admin socket = $d/run/\$name.\$pid.asok
log file = $d/log/\$name.\$pid.log
rados osd op timeout = 60
rados mon op timeout = 60
[mon]
mon data = $d/\$name
mon cluster log file = $d/log/cluster.log
[mgr]
mgr data = $d/\$name
# The mgr imports every python module at start: that dominates bring-up under TCG.
# Load only what a single-node test cluster uses (the rest: dashboard-like
# services, exporters, orchestrators, telemetry).
mgr disabled modules = alerts diskprediction_local influx insights localpool mirroring nfs osd_perf_query osd_support prometheus restful selftest snap_schedule stats telegraf test_orchestrator zabbix k8sevents cephadm rook dashboard diskprediction_cloud iostat
mgr initial modules =
[osd]
osd data = $d/\$name
osd objectstore = $CEPH_STORE
memstore device bytes = 2147483648
bluestore block path = $d/\$name/block.file
bluestore block create = true
bluestore block size = 4294967296
bluestore fsck on mount = false
bluestore cache autotune = false
bluestore cache size = 134217728
osd memory target = 939524096
osd max object name len = 460
osd max object namespace len = 64
osd op num shards = 2
osd op num threads per shard = 1
[mds]
mds data = $d/\$name
# after a restart the MDS waits this long for old (e.g. SIGKILLed ceph-fuse) sessions; default 45 s
mds reconnect timeout = 5
mds beacon interval = 1
EOF
}

# ---------------------------------------------------------------- python helper
# One interpreter with one rados connection does the bootstrap commands and the
# readiness polling (the ceph CLI is a python program: starting it per poll costs
# seconds under TCG).
run_py() { CEPH_DIR=$CEPH_DIR WITH_FS=$WITH_FS CEPH_FAST=${CEPH_FAST:-0} "$PY" - "$@" <<'PY'
import json, os, sys, time
import rados

d = os.environ["CEPH_DIR"]
with_fs = os.environ.get("WITH_FS") == "1"
conf = d + "/ceph.conf"
t0 = time.time()

def log(msg):
    print("ceph.sh[py] +%5.1fs %s" % (time.time() - t0, msg), file=sys.stderr, flush=True)

def connect(deadline):
    last = None
    while time.time() < deadline:
        try:
            c = rados.Rados(conffile=conf, name="client.admin",
                            conf={"client_mount_timeout": "10", "rados_mon_op_timeout": "15",
                                  "rados_osd_op_timeout": "15"})
            c.connect(timeout=10)
            return c
        except Exception as e:
            last = e
            time.sleep(0.3)
    raise SystemExit("cannot connect to the mon: %r" % (last,))

def cmd(c, prefix, inbuf=b"", check=True, **kw):
    kw["prefix"] = prefix
    kw.setdefault("format", "json")
    ret, out, outs = c.mon_command(json.dumps(kw), inbuf, timeout=30)
    if check and ret != 0:
        raise SystemExit("mon command %s failed: %d %s" % (json.dumps(kw), ret, outs))
    return ret, out, outs

def bootstrap(c, osd_uuid, osd_key):
    # the OSD id (its key is set at the same time)
    _, out, _ = cmd(c, "osd new", json.dumps({"cephx_secret": osd_key}).encode(), uuid=osd_uuid)
    osd_id = json.loads(out)["osdid"] if out.strip().startswith(b"{") else int(out)
    pools = [("rbd", 8, "rbd")]
    if with_fs:
        pools += [("cephfs_metadata", 8, None), ("cephfs_data", 8, None)]
    for name, pg, app in pools:
        cmd(c, "osd pool create", pool=name, pg_num=pg, pgp_num=pg)
        if app:
            cmd(c, "osd pool application enable", pool=name, app=app)
    if with_fs:
        cmd(c, "fs new", fs_name="cephfs", metadata="cephfs_metadata", data="cephfs_data")
        cmd(c, "fs set", fs_name="cephfs", var="standby_count_wanted", val="0")
    log("osd.%s created, pools %s%s" % (osd_id, ",".join(p[0] for p in pools), ", fs cephfs" if with_fs else ""))
    print(osd_id)

def state(c):
    _, out, _ = cmd(c, "status")
    s = json.loads(out)
    _, out, _ = cmd(c, "osd dump")
    od = json.loads(out)
    expect_pgs = sum(p["pg_num"] for p in od["pools"])
    want = {}
    want["quorum"] = bool(s.get("quorum_names"))
    want["mgr"] = bool(s.get("mgrmap", {}).get("available"))
    om = s.get("osdmap", {})
    om = om.get("osdmap", om)           # older layouts nest it once more
    want["osd"] = om.get("num_osds", 0) >= 1 and om.get("num_up_osds") == om.get("num_osds") \
        and om.get("num_in_osds") == om.get("num_osds")
    pm = s.get("pgmap", {})
    clean = sum(x["count"] for x in pm.get("pgs_by_state", []) if x["state_name"] == "active+clean")
    want["pgs"] = pm.get("num_pgs", 0) >= expect_pgs and clean == pm.get("num_pgs") and clean >= expect_pgs
    if with_fs:
        fm = s.get("fsmap", {})
        want["mds"] = any(r.get("status") == "up:active" for r in fm.get("by_rank", []))
    h = s.get("health", {})
    want["health"] = h.get("status") == "HEALTH_OK"
    summary = "pgs %d/%d active+clean (%s); osd %s/%s up; mgr %s; fs %s; %s %s" % (
        clean, expect_pgs,
        ",".join("%s=%d" % (x["state_name"], x["count"]) for x in pm.get("pgs_by_state", [])) or "-",
        om.get("num_up_osds"), om.get("num_osds"),
        "available" if want["mgr"] else "not available",
        ",".join(r.get("status", "?") for r in s.get("fsmap", {}).get("by_rank", [])) or "-",
        h.get("status"), ",".join(sorted(h.get("checks", {}).keys())))
    return want, summary, s

def probe_io(c):
    io = c.open_ioctx("rbd")
    try:
        io.write_full("lab-ready-probe", b"ready")
        if io.read("lab-ready-probe") != b"ready":
            raise SystemExit("probe object read back wrong data")
        io.remove_object("lab-ready-probe")
    finally:
        io.close()

def rbd_init(c):
    import rbd
    io = c.open_ioctx("rbd")
    try:
        rbd.RBD().pool_init(io, False)
    finally:
        io.close()

def fs_mkdirs(c, path):
    import cephfs
    fs = cephfs.LibCephFS(rados_inst=c)
    try:
        fs.mount(filesystem_name=b"cephfs")
        fs.mkdirs(path.encode(), 0o755)
        log("cephfs: %s exists" % path)
        fs.unmount()
    finally:
        fs.shutdown()
    log("cephfs: admin session closed")

def wait_ready(c, deadline, rbd_pool_init, mkdir=None, fast=False):
    last_summary = None
    inited = not rbd_pool_init
    made = mkdir is None
    while True:
        try:
            want, summary, s = state(c)
        except SystemExit as e:
            want, summary, s = {"error": False}, "status failed: %s" % e, {}
        if summary != last_summary:
            log(summary)
            last_summary = summary
        # Pool init and the client's directory need only the OSD (and the MDS), not
        # the mgr: do them while the mgr is still loading (its python modules take
        # the longest under TCG). A librados op simply waits for its PG to activate.
        if not inited and want.get("osd"):
            try:
                rbd_init(c)
                inited = True
                log("rbd pool initialised")
            except Exception as e:
                log("rbd pool init not yet possible: %r" % (e,))
            continue
        if not made and want.get("osd") and want.get("mds"):
            fs_mkdirs(c, mkdir)
            made = True
            continue
        # --fast: the data path only (quorum, OSD, MDS, pool init, probe I/O below);
        # the mgr (PG stats, health) keeps loading in the background
        need = {k: v for k, v in want.items() if k in ("quorum", "osd", "mds")} if fast else want
        if inited and made and all(need.values()):
            probe_io(c)
            log("ready: %s" % summary)
            return 0
        if time.time() > deadline:
            missing = [k for k, v in want.items() if not v]
            print("NOT READY (missing: %s): %s" % (",".join(missing), summary), file=sys.stderr)
            try:
                _, out, _ = cmd(c, "health", check=False, detail="detail", format="plain")
                print(out.decode(errors="replace"), file=sys.stderr)
            except Exception:
                pass
            return 1
        time.sleep(0.5)

what = sys.argv[1]
if what == "bootstrap":
    c = connect(time.time() + float(sys.argv[4]))
    bootstrap(c, sys.argv[2], sys.argv[3])
    c.shutdown()
elif what == "wait-ready":
    deadline = time.time() + float(sys.argv[2])
    c = connect(deadline)
    rc = wait_ready(c, deadline, sys.argv[3] == "1", sys.argv[4] or None, os.environ.get("CEPH_FAST") == "1")
    c.shutdown()
    log("done")
    sys.exit(rc)
elif what == "fs-mkdir":
    c = connect(time.time() + 30)
    fs_mkdirs(c, sys.argv[2])
    c.shutdown()
else:
    raise SystemExit("unknown helper command " + what)
PY
}

# ---------------------------------------------------------------- commands
ceph_write_env() {
  local d=$CEPH_DIR k=$CEPH_DIR/keys
  cat > "$d/env" <<EOF
# written by vm-tests/servers/ceph.sh start; source it
export CEPH_DIR=$d
export CEPH_CONF=$d/ceph.conf
export CEPH_FSID=$(awk '$1 == "fsid" { print $3 }' "$d/ceph.conf")
export CEPH_IP=$CEPH_IP
export CEPH_MON=$CEPH_IP:6789
export CEPH_MON_V2=$CEPH_IP:3300
export CEPH_STORE=$CEPH_STORE
export CEPH_ADMIN_KEYRING=$k/client.admin.keyring
export CEPH_ADMIN_SECRET_FILE=$k/client.admin.secret
export CEPH_RBD_POOL=rbd
export CEPH_RBD_USER=rbd
export CEPH_RBD_KEYRING=$k/client.rbd.keyring
export CEPH_RBD_SECRET_FILE=$k/client.rbd.secret
EOF
  if [[ $WITH_FS == 1 ]]; then
    cat >> "$d/env" <<EOF
export CEPH_FS_NAME=cephfs
export CEPH_FS_SUBDIR=/volumes/moor
export CEPH_FS_USER=fs
export CEPH_FS_KEYRING=$k/client.fs.keyring
export CEPH_FS_SECRET_FILE=$k/client.fs.secret
EOF
  fi
  # what restart/stop need to know about this cluster
  printf 'CEPH_IP=%s\nCEPH_STORE=%s\nWITH_FS=%s\n' "$CEPH_IP" "$CEPH_STORE" "$WITH_FS" > "$d/lab.settings"
}

cmd_start() {
  lab_require_root
  local t0 d=$CEPH_DIR fsid osd_uuid osd_key osd_id
  t0=$(date +%s.%N)
  command -v ceph-mon >/dev/null || lab_die "ceph: ceph-mon not installed (vm-tests/image/packages/ceph.list)"
  if [[ -e $d/run ]]; then cmd_stop; fi
  # refuse to fight another cluster on our address
  if ss -Hltn "( sport = :6789 )" 2>/dev/null | grep -q "$CEPH_IP:6789"; then
    lab_die "ceph: something already listens on $CEPH_IP:6789 (another cluster? stop it or use --ip)"
  fi
  rm -rf "$d"
  mkdir -p "$d"/{run,log,keys,crash,mon.a,mgr.x,mds.a}
  fsid=$(new_uuid)
  write_conf "$fsid"

  # All keys up front; the mon imports them at mkfs, so no auth round trips later.
  write_keyring mon. "$(gen_key)" mon 'allow *'
  write_keyring client.admin "$(gen_key)" mon 'allow *' osd 'allow *' mds 'allow *' mgr 'allow *'
  write_keyring mgr.x "$(gen_key)" mon 'allow profile mgr' osd 'allow *' mds 'allow *'
  write_keyring client.rbd "$(gen_key)" mon 'profile rbd' osd 'profile rbd pool=rbd' mgr 'profile rbd pool=rbd'
  if [[ $WITH_FS == 1 ]]; then
    write_keyring mds.a "$(gen_key)" mon 'allow profile mds' osd 'allow rw tag cephfs *=*' mds 'allow' mgr 'allow profile mds'
    # exactly the caps `ceph fs authorize cephfs client.fs /volumes/moor rw` gives
    write_keyring client.fs "$(gen_key)" mon 'allow r fsname=cephfs' mds 'allow rw fsname=cephfs path=/volumes/moor' osd 'allow rw tag cephfs data=cephfs'
  fi
  # The OSD's mkfs needs only ceph.conf (fsid), its uuid and key: run it now, in
  # parallel with the mon's mkfs and the bootstrap commands (the id is always 0:
  # `osd new` below must agree).
  osd_uuid=$(new_uuid); osd_key=$(gen_key)
  write_keyring osd.0 "$osd_key"
  mkdir -p "$d/osd.0"
  ceph-osd -i 0 -c "$d/ceph.conf" --mkfs --no-mon-config --key "$osd_key" --osd-uuid "$osd_uuid" \
    >"$d/log/osd.0.mkfs.out" 2>&1 &
  local mkfs_pid=$!
  # everything but osd.0 (`osd new` creates that entity with its caps)
  cat "$d"/keys/mon..keyring "$d"/keys/client.*.keyring "$d"/keys/m[dg][sr].*.keyring > "$d/mkfs.keyring"
  cp "$d/keys/mon..keyring" "$d/keys/mon.a.keyring"
  clog "config and keys written"
  monmaptool --create --fsid "$fsid" --addv a "[v2:$CEPH_IP:3300,v1:$CEPH_IP:6789]" "$d/monmap" >/dev/null
  ceph-mon --mkfs -i a -c "$d/ceph.conf" --monmap "$d/monmap" --keyring "$d/mkfs.keyring" \
    >"$d/log/mon.a.mkfs.out" 2>&1 || { cat "$d/log/mon.a.mkfs.out" >&2; cdie "mon mkfs failed"; }
  rm -f "$d/mkfs.keyring"
  ceph_write_env
  daemon_start mon.a
  daemon_start mgr.x        # loads in parallel with everything below

  osd_id=$(run_py bootstrap "$osd_uuid" "$osd_key" 60) || cdie "bootstrap commands failed"
  [[ $osd_id == 0 ]] || cdie "unexpected osd id '$osd_id'"
  wait "$mkfs_pid" || { cat "$d/log/osd.0.mkfs.out" >&2; cdie "osd mkfs failed"; }
  clog "osd.0 mkfs done ($CEPH_STORE)"
  daemon_start osd.0
  [[ $WITH_FS == 1 ]] && daemon_start mds.a

  # ready, then pool init (done once the OSD is up) and the client's subdir
  local subdir=""
  [[ $WITH_FS == 1 ]] && subdir=/volumes/moor
  cmd_wait_ready "${CEPH_READY_TIMEOUT:-240}" 1 "$subdir"
  clog "cluster ready in $(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.1f", a - b }') s; env: $d/env"
}

cmd_wait_ready() {
  local secs=${1:-240} init=${2:-0} mkdir=${3:-}
  [[ -s $CEPH_DIR/ceph.conf ]] || lab_die "ceph: no cluster in $CEPH_DIR (run start)"
  local n
  for n in "${DAEMONS_ALL[@]}"; do
    [[ $n == mds.a && $WITH_FS != 1 ]] && continue
    [[ -e $CEPH_DIR/run/$n.exit ]] && cdie "$n exited (status $(cat "$CEPH_DIR/run/$n.exit"))"
  done
  CEPH_FAST=$FAST run_py wait-ready "$secs" "$init" "$mkdir" || cdie "cluster not ready within ${secs}s"
}

# unmount/unmap every client of this cluster, so the daemons can go without leaving
# hung mounts behind. Kernel clients are matched by the mon address, FUSE clients
# by their command line or environment naming this cluster's directory.
stop_clients() {
  local dev m p i
  # kernel cephfs
  while read -r src m fstype _; do
    [[ $fstype == ceph && $src == *"$CEPH_IP"* ]] || continue
    m=$(printf '%b' "$m")
    clog "umount kernel cephfs $m"
    timeout -k 2 20 umount -f "$m" 2>/dev/null || timeout -k 2 10 umount -l "$m" || true
  done < <(tac /proc/mounts)
  # krbd devices
  if [[ -d /sys/bus/rbd/devices ]]; then
    for dev in /sys/bus/rbd/devices/*; do
      [[ -e $dev/config_info ]] || continue
      grep -q "$CEPH_IP" "$dev/config_info" || continue
      i=${dev##*/}
      while read -r src m _; do
        [[ $src == /dev/rbd$i || $src == /dev/rbd$i"p"* ]] || continue
        clog "umount $(printf '%b' "$m") (on /dev/rbd$i)"
        timeout -k 2 20 umount "$(printf '%b' "$m")" 2>/dev/null || timeout -k 2 10 umount -l "$(printf '%b' "$m")" || true
      done < <(tac /proc/mounts)
      clog "unmap /dev/rbd$i"
      timeout -k 2 30 rbd device unmap -o force "/dev/rbd$i" 2>/dev/null \
        || echo "$i force" > /sys/bus/rbd/remove 2>/dev/null || clog "WARNING: cannot unmap /dev/rbd$i"
    done
  fi
  # ceph-fuse / rbd-fuse processes of this cluster
  local pids=() mnt comm
  for p in $(pgrep -x ceph-fuse || true) $(pgrep -x rbd-fuse || true); do
    if tr '\0' '\n' < "/proc/$p/cmdline" 2>/dev/null | grep -q "$CEPH_DIR" \
       || tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -q "^CEPH_CONF=$CEPH_DIR/"; then
      pids+=("$p")
    fi
  done
  for p in "${pids[@]}"; do
    comm=$(cat "/proc/$p/comm" 2>/dev/null) || continue
    # the mount point is the last non-option argument
    # (|| true: the process may exit between the two reads)
    mnt=$(tr '\0' '\n' < "/proc/$p/cmdline" 2>/dev/null | grep -v '^-' | tail -1 || true)
    if [[ -n $mnt ]] && awk -v m="$mnt" '$2 == m { f = 1 } END { exit !f }' /proc/mounts; then
      # loop devices backed by files in an rbd-fuse mount
      for dev in $(losetup -nO NAME,BACK-FILE 2>/dev/null | awk -v m="$mnt/" 'index($2, m) == 1 { print $1 }'); do
        while read -r src m _; do [[ $src == "$dev" ]] && timeout -k 2 10 umount -l "$(printf '%b' "$m")"; done < <(tac /proc/mounts)
        losetup -d "$dev" 2>/dev/null || true
      done
      clog "umount $comm mount $mnt"
      timeout -k 2 20 umount "$mnt" 2>/dev/null || timeout -k 2 10 umount -l "$mnt" || true
    fi
    # ceph-fuse sometimes stays after umount and ignores SIGTERM
    for i in $(seq 1 50); do lab_pid_alive "$p" || break; sleep 0.1; done
    if lab_pid_alive "$p"; then kill -KILL "$p" 2>/dev/null || true; clog "killed $comm $p"; fi
  done
}

cmd_stop() {
  [[ -d $CEPH_DIR/run ]] || return 0
  stop_clients
  local n p
  # SIGKILL all at once (a big process such as the mgr takes seconds to exit under
  # TCG), then reap them one by one
  for n in mds.a osd.0 mgr.x mon.a; do
    if p=$(daemon_pid "$n"); then kill -KILL "$p" 2>/dev/null || true; fi
  done
  for n in mds.a osd.0 mgr.x mon.a; do daemon_stop "$n"; done
  rm -f "$CEPH_DIR"/run/*.asok
  clog "all daemons stopped"
}

cmd_restart() {
  [[ $CEPH_STORE == bluestore ]] || lab_die "ceph: restart needs --store bluestore (memstore loses its data)"
  cmd_stop
  local n
  for n in "${DAEMONS_ALL[@]}"; do
    [[ $n == mds.a && $WITH_FS != 1 ]] && continue
    daemon_start "$n"
  done
  cmd_wait_ready "${1:-${CEPH_READY_TIMEOUT:-240}}" 0
}

# mkdir -p in the CephFS through libcephfs (no mount, no FUSE needed)
fs_mkdir() { run_py fs-mkdir "$1" || cdie "cannot create $1 in cephfs"; }

cmd_fs_authorize() {
  local user=$1 path=$2 perm=${3:-rw} k=$CEPH_DIR/keys/client.$1
  fs_mkdir "$path"
  CEPH_CONF=$CEPH_DIR/ceph.conf C fs authorize cephfs "client.$user" "$path" "$perm" > "$k.keyring" \
    || cdie "fs authorize client.$user $path failed"
  chmod 600 "$k.keyring"
  CEPH_CONF=$CEPH_DIR/ceph.conf C auth get-key "client.$user" > "$k.secret"
  chmod 600 "$k.secret"
  clog "client.$user may use $path ($perm): $k.keyring, $k.secret"
}

cmd_fs_evict() {
  local user=$1 left
  export CEPH_CONF=$CEPH_DIR/ceph.conf
  # one call evicts every session of the user (the MDS blocklists each client's address)
  C tell mds.a client evict "client_metadata.entity_id=$user" >/dev/null 2>&1 \
    || cdie "evict of client.$user failed"
  left=$(C tell mds.a client ls --format json 2>/dev/null | "$PY" -c '
import json, sys
print(sum(1 for s in json.load(sys.stdin) if s.get("client_metadata", {}).get("entity_id") == sys.argv[1]))' "$user") \
    || cdie "cannot list MDS sessions"
  [[ $left == 0 ]] || cdie "client.$user still has $left MDS session(s) after evict"
  clog "evicted every MDS session of client.$user (addresses blocklisted: ceph osd blocklist ls)"
}

cmd_status() {
  local n p
  for n in "${DAEMONS_ALL[@]}"; do
    if p=$(daemon_pid "$n"); then echo "$n: running pid $p"; else echo "$n: not running"; fi
  done
  CEPH_CONF=$CEPH_DIR/ceph.conf C -s || true
}

# ---------------------------------------------------------------- main
ARGS=()
while (($#)); do
  case $1 in
    --dir) CEPH_DIR=$2; shift 2;;
    --ip) CEPH_IP=$2; shift 2;;
    --store) CEPH_STORE=$2; shift 2;;
    --no-fs) WITH_FS=0; shift;;
    --fast) FAST=1; shift;;
    -h|--help) usage;;
    *) ARGS+=("$1"); shift;;
  esac
done
set -- "${ARGS[@]+"${ARGS[@]}"}"
(($#)) || usage
CEPH_DIR=$(realpath -m "$CEPH_DIR")
# later commands use the settings the cluster was started with
if [[ $1 != start && -s $CEPH_DIR/lab.settings ]]; then
  # shellcheck disable=SC1091
  . "$CEPH_DIR/lab.settings"
fi
case $CEPH_STORE in memstore|bluestore) ;; *) lab_die "ceph: --store must be memstore or bluestore";; esac
export CEPH_CONF=$CEPH_DIR/ceph.conf

cmd=$1; shift
case $cmd in
  start) cmd_start ;;
  wait-ready) cmd_wait_ready "${1:-240}" 0 ;;
  stop) cmd_stop ;;
  destroy) cmd_stop; rm -rf "$CEPH_DIR" ;;
  restart) cmd_restart "$@" ;;
  daemon-stop)
    [[ $# -eq 1 ]] || usage
    daemon_stop "$1"
    # a single OSD has no peers to report it: without this the mon shows it "up" for
    # mon_osd_report_timeout (15 min)
    if [[ $1 == osd.* ]] && daemon_pid mon.a >/dev/null; then
      C osd down "${1#osd.}" >/dev/null 2>&1 || clog "WARNING: could not mark $1 down"
    fi ;;
  daemon-start) [[ $# -eq 1 ]] || usage; daemon_start "$1" ;;
  fs-mkdir) [[ $# -eq 1 ]] || usage; fs_mkdir "$1" ;;
  fs-authorize) [[ $# -ge 2 ]] || usage; cmd_fs_authorize "$@" ;;
  fs-evict) [[ $# -eq 1 ]] || usage; cmd_fs_evict "$1" ;;
  status) cmd_status ;;
  logs) ceph_dump_logs "${1:-40}" ;;
  *) usage ;;
esac
