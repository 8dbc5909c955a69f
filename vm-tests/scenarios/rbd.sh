#!/bin/bash
# moor~rbd against a real Ceph cluster: data survives remount and is shared by two pods, the secret key never reaches argv/journal/logs, a watched or locked image is refused rw naming the client and still mounts ro, an exclusive-lock image is mapped holding its lock (a racing rw map fails), nothing left mapped, a foreign filesystem is never formatted, an image in a RADOS namespace is its own volume, expandfs grows the mounted ext4 after rbd resize, SIGKILL right after rbd map leaves no orphan mapping.
# vm: mem=3072 cpus=2 timeout=600
set -euo pipefail
. "$LAB_DIR/lib/lab.sh"
. "$LAB_DIR/lib/moor-node.sh"
. "$LAB_DIR/servers/ceph.sh"

R() { lab_with_deadline 60 rbd "$@"; }

lab_require_moor
lab_ceph_start
lab_on_exit lab_ceph_stop
unmap_all() { local d; for d in /dev/rbd[0-9]*; do [[ -b $d ]] && rbd unmap -o force "$d"; done; true; }
lab_on_exit unmap_all
lab_modprobe rbd
for i in 1 2 3 5; do
  R create "$CEPH_RBD_POOL/img$i" --size 64M --image-feature layering
done
R create "$CEPH_RBD_POOL/img4" --size 320M --image-feature layering   # mkfs.xfs wants >= 300 MB
lab_step "ceph ready; images img1..img5 created"

# ---------------------------------------------------------------- moor daemon
# Every rbd the daemon runs goes through a wrapper that records its argv.
WRAP=/tmp/rbd-wrap
REAL_RBD=$(command -v rbd)
mkdir -p "$WRAP"
cat > "$WRAP/rbd" <<EOF
#!/bin/bash
printf '%s\n' "\$*" >> /tmp/rbd-argv.log
exec $REAL_RBD "\$@"
EOF
chmod +x "$WRAP/rbd"
DAEMON_LOG=$LAB_OUT/moor-daemon.log
PAUSE_MARKER=/tmp/moor-paused
DAEMON_PID=
start_daemon() {   # [PAUSE_POINT]
  if [[ -n ${1:-} ]] && ! "$MOOR" version | grep -q test-hooks; then
    lab_die "$MOOR has no pause points: build it with cargo build --features test-hooks"
  fi
  # No CEPH_CONF: moor must reach the cluster with the volume's options alone.
  env -u CEPH_CONF PATH="$WRAP:$PATH" MOOR_LOG_FORMAT=json \
    MOOR_TEST_PAUSE_AT="${1:-}" MOOR_TEST_PAUSE_MARKER="$PAUSE_MARKER" \
    "$MOOR" daemon --metrics-addr off --node-name node1 >> "$DAEMON_LOG" 2>&1 &
  DAEMON_PID=$!
  lab_wait_for 30 "moor daemon socket" "$MOOR" status
}
stop_daemon() {
  [[ -n $DAEMON_PID ]] || return 0
  kill "$DAEMON_PID" 2>/dev/null || true
  wait "$DAEMON_PID" 2>/dev/null || true
  DAEMON_PID=
}
lab_on_exit stop_daemon
start_daemon

KEY=$(cat "$CEPH_RBD_SECRET_FILE")
KEY_B64=$(printf %s "$KEY" | base64 -w0)
opts() {   # IMAGE RW FSTYPE [extra jq]
  jq -cn --arg mon "$CEPH_MON" --arg img "$1" --arg rw "$2" --arg fs "$3" --arg key "$KEY_B64" \
    --arg user "$CEPH_RBD_USER" '{
    monitors: $mon, pool: "rbd", image: $img, user: $user,
    "kubernetes.io/secret/key": $key, "kubernetes.io/fsType": $fs,
    "kubernetes.io/readwrite": $rw, "kubernetes.io/pvOrVolumeName": $img }'
}
pod() { local d; d=$(lab_pod_volume_dir "$1" rbd "$2"); mkdir -p "$d"; echo "$d"; }
flex_fails() {   # EXPECTED-SUBSTRING OP ARGS… : the reply is a Failure whose message contains it
  local want=$1 reply; shift
  reply=$(lab_with_deadline 120 "$MOOR" flex "$@") || true
  printf '%s\n' "$reply" >&2
  [[ $(jq -r .status <<< "$reply") == Failure ]] || lab_die "moor flex $1 should have failed: $reply"
  jq -r .message <<< "$reply" | grep -qF -- "$want" || lab_die "message lacks '$want': $reply"
  jq -r .message <<< "$reply"
}
mapped() { ls /sys/bus/rbd/devices 2>/dev/null | wc -l; }
assert_nothing_mapped() {
  [[ $(mapped) == 0 ]] || lab_die "mappings left: $(ls /sys/bus/rbd/devices) / $(rbd showmapped)"
  [[ -z $(rbd showmapped 2>/dev/null) ]] || lab_die "rbd showmapped: $(rbd showmapped)"
  [[ -z $(ls -A /run/moor/secrets 2>/dev/null) ]] || lab_die "key files left: $(find /run/moor/secrets)"
  [[ -z $(ls -A /run/moor/rbd 2>/dev/null) ]] || lab_die "mapping claims left: $(ls /run/moor/rbd)"
}

# ---------------------------------------------------------------- data, remount, two pods
A=$(pod aaaa0001-0000-4000-8000-000000000001 v1)
B=$(pod bbbb0002-0000-4000-8000-000000000002 v1)
lab_moor_flex mount "$A" "$(opts img1 rw ext4)" >/dev/null
lab_assert_mounted "$A" ext4
[[ $(mapped) == 1 ]] || lab_die "expected one mapping, got $(mapped)"
kf=$(find /run/moor/secrets -name keyfile)
[[ $(stat -c %a "$kf") == 600 && $(stat -c %a "$(dirname "$kf")") == 700 ]] \
  || lab_die "key file $kf is not 0600 in a 0700 directory"
R status rbd/img1 --format json > "$LAB_OUT/rbd-status-mapped.json"
id=$(ls /sys/bus/rbd/devices)   # the kernel's view, kept as a fixture for the sysfs walker
mkdir -p "$LAB_OUT/rbd-sysfs/bus/rbd/devices/$id" "$LAB_OUT/rbd-sysfs/block/rbd$id"
for a in pool pool_ns name current_snap client_id client_addr major minor features; do
  cat "/sys/bus/rbd/devices/$id/$a" > "$LAB_OUT/rbd-sysfs/bus/rbd/devices/$id/$a" 2>/dev/null || true
done
cat "/sys/block/rbd$id/ro" > "$LAB_OUT/rbd-sysfs/block/rbd$id/ro"
R lock list rbd/img1 --format json > "$LAB_OUT/rbd-lock-list-none.json"
R status rbd/img2 --format json > "$LAB_OUT/rbd-status-idle.json"
echo moor-rbd-data > "$A/f"
lab_moor_flex unmount "$A" >/dev/null
assert_nothing_mapped
lab_step "pod A wrote through /dev/rbd (key file 0600 while mapped); after unmount nothing mapped, no key file"
lab_moor_flex mount "$A" "$(opts img1 rw ext4)" >/dev/null
lab_assert_file_eq "$A/f" moor-rbd-data
lab_moor_flex mount "$B" "$(opts img1 rw ext4)" >/dev/null
lab_assert_file_eq "$B/f" moor-rbd-data
[[ $(mapped) == 1 ]] || lab_die "two pods, one image: expected one mapping, got $(mapped)"
lab_moor_flex unmount "$A" >/dev/null
[[ $(mapped) == 1 ]] || lab_die "pod B still uses img1 but it was unmapped"
lab_assert_file_eq "$B/f" moor-rbd-data
lab_moor_flex unmount "$B" >/dev/null
assert_nothing_mapped
lab_step "data survives unmount+remount, visible in a second pod dir, one mapping for both, unmapped after the last"

# ---------------------------------------------------------------- restart: reuse the mapping
lab_moor_flex mount "$A" "$(opts img1 rw ext4)" >/dev/null
dev1=$(ls /sys/bus/rbd/devices)
stop_daemon
start_daemon
lab_moor_flex mount "$B" "$(opts img1 rw ext4)" >/dev/null
[[ $(ls /sys/bus/rbd/devices) == "$dev1" ]] || lab_die "after a restart img1 was mapped again: $(ls /sys/bus/rbd/devices)"
lab_moor_flex unmount "$A" >/dev/null
lab_moor_flex unmount "$B" >/dev/null
assert_nothing_mapped
lab_step "after a daemon restart the existing /dev/rbd$dev1 is reused, not mapped twice"

# ---------------------------------------------------------------- expandfs: the image grew
# kubelet's NodeExpand after the claim grew: the PV's options without the secret (kubelet
# sends none to expandfs), new and old sizes. The provisioner's `rbd resize` grows the
# image. kubelet names a PV's pod volume directory after the PV, and so does this pod.
X=$(pod 10100010-0000-4000-8000-000000000010 img1)
lab_moor_flex mount "$X" "$(opts img1 rw ext4)" >/dev/null
pv=$(opts img1 rw ext4 | jq -c 'del(."kubernetes.io/secret/key")')
old=$((64 << 20)) new=$((128 << 20))
size_of() { df -B1 --output=size "$X" | tail -n 1 | tr -d ' '; }
before=$(size_of)
msg=$(flex_fails "device_too_small" --driver rbd expandfs "$pv" not-used "" "$new" "$old")
R resize rbd/img1 --size 128M
# no wait for krbd's header watch: moor refreshes the header itself
lab_moor_flex --driver rbd expandfs "$pv" not-used "" "$new" "$old" >/dev/null
id=$(ls /sys/bus/rbd/devices)
lab_assert_eq "$(( $(cat "/sys/block/rbd$id/size") * 512 ))" "$new" "size of /dev/rbd$id"
after=$(size_of)
(( after > before * 18 / 10 )) || lab_die "img1 doubled but $X shows $after bytes (was $before)"
lab_assert_file_eq "$X/f" moor-rbd-data
lab_moor_flex unmount "$X" >/dev/null
assert_nothing_mapped
lab_step "expandfs: refused while img1 was 64 MiB (${msg:0:120}); after rbd resize the mounted ext4 grew from $before to $after bytes, data intact"

# ---------------------------------------------------------------- RADOS namespaces
# A tenant whose key reaches only namespace ns1 of the pool (ceph-csi's radosNamespace):
# its img1 is not the default namespace's img1. Both are mapped at once, each reused and
# unmapped by its own name (sysfs pool_ns), and the tenant's key opens nothing outside ns1.
R namespace create rbd/ns1
R create rbd/ns1/img1 --size 64M --image-feature layering
lab_with_deadline 60 ceph auth get-or-create client.tenant mon 'profile rbd' \
  osd 'profile rbd pool=rbd namespace=ns1' > /dev/null
TENANT_KEY=$(lab_with_deadline 60 ceph auth get-key client.tenant)
tenant_opts() {   # IMAGE RW [NAMESPACE]
  opts "$1" "$2" ext4 | jq -c --arg ns "${3:-}" --arg key "$(printf %s "$TENANT_KEY" | base64 -w0)" \
    '. + {user: "tenant", "kubernetes.io/secret/key": $key} + (if $ns == "" then {} else {radosNamespace: $ns} end)'
}
N=$(pod 12120009-0000-4000-8000-000000000009 vns)
lab_moor_flex mount "$N" "$(tenant_opts img1 rw ns1)" >/dev/null
lab_assert_mounted "$N" ext4
[[ ! -e $N/f ]] || lab_die "ns1/img1 shows the default namespace's img1 data"
echo tenant-data > "$N/f"
lab_moor_flex mount "$A" "$(opts img1 rw ext4)" >/dev/null
lab_assert_file_eq "$A/f" moor-rbd-data
[[ $(mapped) == 2 ]] || lab_die "img1 and ns1/img1: expected two mappings, got $(mapped)"
lab_assert_eq "$(grep -lx ns1 /sys/bus/rbd/devices/*/pool_ns | wc -l)" 1 "mappings in namespace ns1"
lab_moor_flex unmount "$N" >/dev/null
[[ $(mapped) == 1 && -z $(cat /sys/bus/rbd/devices/*/pool_ns) ]] \
  || lab_die "unmounting ns1/img1 did not leave exactly the default img1 mapped"
lab_assert_file_eq "$A/f" moor-rbd-data
lab_moor_flex unmount "$A" >/dev/null
assert_nothing_mapped
lab_moor_flex mount "$N" "$(tenant_opts img1 ro ns1)" >/dev/null
lab_assert_file_eq "$N/f" tenant-data
lab_moor_flex unmount "$N" >/dev/null
msg=$(flex_fails "rbd status rbd/img1" mount "$N" "$(tenant_opts img1 rw)")
grep -qiE "not permitted|permission denied" <<< "$msg" || lab_die "the tenant's refusal is not a permission error: $msg"
assert_nothing_mapped
lab_step "namespace ns1: its img1 and the default img1 mapped side by side and unmapped apart; the tenant key is refused outside ns1: ${msg:0:160}"

# ---------------------------------------------------------------- fencing
# img2 gets a filesystem (mapped by hand, then unmapped), then another client watches it.
dev=$(R map rbd/img2 --id "$CEPH_RBD_USER")
lab_run mkfs.ext4 -q "$dev"
mkdir -p /mnt/img2 && mount "$dev" /mnt/img2 && echo shared > /mnt/img2/f && umount /mnt/img2
lab_run rbd unmap "$dev"
# rbd-fuse opens the image on first access and keeps it open (one watcher) until unmount.
mkdir -p /mnt/rbd-fuse
lab_run lab_with_deadline 60 rbd-fuse -p rbd -r img2 /mnt/rbd-fuse
lab_on_exit "umount /mnt/rbd-fuse"
lab_with_deadline 30 head -c 512 /mnt/rbd-fuse/img2 > /dev/null
lab_wait_for 30 "a watcher on img2" bash -c "rbd status rbd/img2 --format json | jq -e '.watchers | length == 1'"
watcher=$(R status rbd/img2 --format json | jq -r '.watchers[0] | "client.\(.client) at \(.address)"')
C=$(pod cccc0003-0000-4000-8000-000000000003 v2)
msg=$(flex_fails "$watcher" mount "$C" "$(opts img2 rw ext4)")
assert_nothing_mapped
lab_step "rw refused while another client watches img2: $msg"
lab_moor_flex mount "$C" "$(opts img2 ro ext4)" >/dev/null
lab_assert_file_eq "$C/f" shared
touch "$C/nope" 2>/dev/null && lab_die "read-only volume is writable"
[[ $(cat "/sys/block/rbd$(ls /sys/bus/rbd/devices)/ro") == 1 ]] || lab_die "not mapped --read-only"
lab_moor_flex unmount "$C" >/dev/null
assert_nothing_mapped
lab_run umount /mnt/rbd-fuse
lab_step "read-only still mounts (mapped --read-only) beside the other client"

R lock add rbd/img3 other-node-lock
R lock list rbd/img3 --format json > "$LAB_OUT/rbd-lock-list-one.json"
locker=$(R lock list rbd/img3 --format json | jq -r '.[0].locker')
D=$(pod dddd0004-0000-4000-8000-000000000004 v3)
msg=$(flex_fails "held by $locker" mount "$D" "$(opts img3 rw ext4)")
assert_nothing_mapped
R lock remove rbd/img3 other-node-lock "$locker"
lab_step "rw refused while another client holds a lock on img3: $msg"

# A mapping made by hand on this node (another kernel client) is neither shared nor unmapped.
dev=$(R map rbd/img3 --id "$CEPH_RBD_USER")
client=$(cat "/sys/bus/rbd/devices/${dev#/dev/rbd}/client_id")
msg=$(flex_fails "$dev by client.${client#client}" mount "$D" "$(opts img3 rw ext4)")
flex_fails "$dev" mount "$D" "$(opts img3 ro ext4)" >/dev/null
[[ -b $dev && $(mapped) == 1 ]] || lab_die "moor touched the hand-made mapping $dev"
lab_run rbd unmap "$dev"
assert_nothing_mapped
lab_step "an image mapped by hand on this node is refused rw and ro, and left mapped: $msg"

# ---------------------------------------------------------------- never format a foreign fs
dev=$(R map rbd/img4 --id "$CEPH_RBD_USER")
lab_run mkfs.xfs -q "$dev"
lab_run rbd unmap "$dev"
E=$(pod eeee0005-0000-4000-8000-000000000005 v4)
flex_fails "xfs" mount "$E" "$(opts img4 rw ext4)" >/dev/null
assert_nothing_mapped
dev=$(R map rbd/img4 --id "$CEPH_RBD_USER" --read-only)
[[ $(blkid -p -o value -s TYPE "$dev") == xfs ]] || lab_die "img4 is no longer xfs"
lab_run rbd unmap "$dev"
lab_step "an xfs image asked for as ext4 is refused and left xfs"

# ---------------------------------------------------------------- a dead monitor
G=$(pod 99990007-0000-4000-8000-000000000007 v6)
t0=$SECONDS
msg=$(flex_fails "rbd status rbd/img5" mount "$G" "$(opts img5 rw ext4 | jq -c '.monitors = "127.0.0.1:1"')")
(( SECONDS - t0 < 60 )) || lab_die "attach against a dead monitor took $((SECONDS - t0)) s"
assert_nothing_mapped
lab_step "a dead monitor fails the mount in $((SECONDS - t0)) s: ${msg:0:200}"

# ---------------------------------------------------------------- SIGKILL right after rbd map
stop_daemon
rm -f "$PAUSE_MARKER"
start_daemon rbd:mapped
F=$(pod ffff0006-0000-4000-8000-000000000006 v5)
lab_with_deadline 120 "$MOOR" flex mount "$F" "$(opts img5 rw ext4)" > /tmp/flex-crash.json 2>&1 &
FLEX_PID=$!
lab_wait_for 60 "pause point rbd:mapped" test -e "$PAUSE_MARKER"
[[ $(mapped) == 1 ]] || lab_die "paused after map but nothing is mapped"
kill -9 "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true; DAEMON_PID=
wait "$FLEX_PID" || true
start_daemon
lab_wait_for 30 "reconstruction unmaps the orphan" bash -c '[[ -z $(ls /sys/bus/rbd/devices) ]]'
assert_nothing_mapped
lab_moor_flex mount "$F" "$(opts img5 rw ext4)" >/dev/null
lab_assert_mounted "$F" ext4
echo after-crash > "$F/f"
lab_moor_flex unmount "$F" >/dev/null
assert_nothing_mapped
lab_step "SIGKILL after rbd map: restart unmapped the orphan, the next mount converged"

# ---------------------------------------------------------------- exclusive-lock: the race closed
# The watcher/lock check and the map are two steps; for an exclusive-lock image moor maps
# with the kernel's `exclusive` option, so the lock is taken in the map and never handed
# over. A second node that passed the check in the same second (played here by a second,
# unshared kernel client asking for the lock the same way) fails its map.
R create "$CEPH_RBD_POOL/img6" --size 64M --image-feature layering,exclusive-lock
H=$(pod 66660008-0000-4000-8000-000000000008 v7)
lab_moor_flex mount "$H" "$(opts img6 rw ext4)" >/dev/null
lab_assert_mounted "$H" ext4
grep -q "exclusive" "/sys/bus/rbd/devices/$(ls /sys/bus/rbd/devices)/config_info" ||
  lab_die "img6 is not mapped with the exclusive option"
lab_assert_eq "$(R lock list rbd/img6 --format json | jq length)" 1 "lock holders of img6 while moor has it mapped"
if racer=$(R map rbd/img6 --id "$CEPH_RBD_USER" -o noshare,exclusive,lock_timeout=5 2>&1); then
  rbd unmap "$racer" || true
  lab_die "a second client mapped img6 read-write while moor held its exclusive lock"
fi
# EROFS is the kernel's answer when the lock owner refuses to hand it over.
grep -qF "(30) Read-only file system" <<< "$racer" || lab_die "the racing map failed for another reason: $racer"
lab_log "the racing map failed: $racer"
echo exclusive > "$H/f"
lab_moor_flex unmount "$H" >/dev/null
assert_nothing_mapped
lab_assert_eq "$(R lock list rbd/img6 --format json | jq length)" 0 "lock holders of img6 after the unmount"
lab_step "exclusive-lock image: moor's map holds the lock, a racing rw map fails, unmount releases it"

# ---------------------------------------------------------------- the key went nowhere
stop_daemon
cp /tmp/rbd-argv.log "$LAB_OUT/"
grep -q -- "--keyfile" /tmp/rbd-argv.log || lab_die "moor never passed --keyfile: $(cat /tmp/rbd-argv.log)"
for k in "$KEY" "$TENANT_KEY"; do
  for f in /tmp/rbd-argv.log "$DAEMON_LOG"; do
    ! grep -qF -- "$k" "$f" || lab_die "a cephx key appears in $f"
  done
  ! grep -rqF -- "$k" /var/lib/moor /run/moor 2>/dev/null || lab_die "a cephx key appears under /var/lib/moor or /run/moor"
done
! grep -rqF -- "$KEY_B64" /var/lib/moor /run/moor "$DAEMON_LOG" 2>/dev/null || lab_die "the base64 key appears in moor's state or log"
lab_step "the key never appeared in rbd's argv ($(wc -l < /tmp/rbd-argv.log) calls), the journal, the run dir or the log"
