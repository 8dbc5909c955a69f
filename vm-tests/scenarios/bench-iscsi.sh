#!/bin/bash
# Benchmark (named runs only): moor~iscsi attach+format+mount vs bare iscsiadm+mkfs+mount in the same guest; prints the ratio (target <= 1.2x).
# vm: bench=1 timeout=600
set -euo pipefail
. "$LAB_DIR/lib/lab.sh"
. "$LAB_DIR/lib/moor-node.sh"
. "$LAB_DIR/servers/iscsi-target.sh"

lab_require_moor
lab_on_exit lab_iscsi_target_stop
lab_on_exit 'iscsiadm -m node --logoutall=all >/dev/null 2>&1 || true'
lab_iscsi_initiator
# A PV-sized LUN (sparse on the target: only what mkfs writes costs anything); 512 MiB, the
# lab's default, is smaller than any real PV and makes mkfs unrealistically short.
LAB_ISCSI_SIZE_MB=${BENCH_LUN_MB:-4096}
lab_iscsi_target plain
# kubelet execs the driver from the node's own disk, and its first call (init) leaves the
# binary in the page cache: run moor from a local copy, warmed, not from the 9p share.
BIN=/usr/local/sbin/moor-bench
install -m 0755 "$MOOR" "$BIN"
"$BIN" flex init >/dev/null
MOOR_LOG=${MOOR_LOG:-info} "$BIN" daemon --metrics-addr off >/tmp/moor-daemon.log 2>&1 &
lab_on_exit "cp /tmp/moor-daemon.log $LAB_OUT/ 2>/dev/null || true"
DAEMON=$!
lab_on_exit "kill $DAEMON 2>/dev/null || true"
lab_wait_for 20 "moor socket" test -S /run/moor/moor.sock
N=${BENCH_N:-7}
T="-T $LAB_ISCSI_IQN -p $LAB_ISCSI_PORTAL"
lun_dev() { ls /sys/class/iscsi_session/session*/device/target*/*:0/block/ 2>/dev/null | head -n 1; }
now() { echo "$EPOCHREALTIME"; }   # no exec: both sides pay the same nothing
wipe() { # blank the LUN so the next run formats again
  iscsiadm -m discovery -t sendtargets -p "$LAB_ISCSI_PORTAL" >/dev/null
  iscsiadm -m node $T -o update -n node.session.scan -v auto >/dev/null
  iscsiadm -m node $T --login >/dev/null
  lab_wait_for 20 disk sh -c '[ -n "$(ls /sys/class/iscsi_session/session*/device/target*/*:0/block/ 2>/dev/null)" ]'
  # wipefs leaves the rest of a superblock behind, which moor rightly refuses to format
  # over: zero both ends, as the refusal's message tells an operator to.
  local dev mib
  dev=/dev/$(lun_dev)
  mib=$(($(blockdev --getsize64 "$dev") / 1048576))
  dd if=/dev/zero of="$dev" bs=1M count=1 oflag=direct status=none
  dd if=/dev/zero of="$dev" bs=1M count=1 seek=$((mib - 1)) oflag=direct status=none
  iscsiadm -m node $T --logout >/dev/null
}
POD_UID=55555555-0000-4000-8000-000000000001
POD=$(lab_pod_volume_dir $POD_UID iscsi b1); mkdir -p "$POD" /mnt/bench
OPTS=$(jq -cn --arg p "$LAB_ISCSI_PORTAL" --arg iqn "$LAB_ISCSI_IQN" --arg uid $POD_UID '{
  targetPortal: $p, iqn: $iqn, lun: "0", "kubernetes.io/fsType": "ext4", "kubernetes.io/readwrite": "rw",
  "kubernetes.io/pod.uid": $uid, "kubernetes.io/pvOrVolumeName": "b1" }')
moor_t=() bare_t=()
for ((i = 0; i < N; i++)); do
  wipe
  t0=$(now); "$BIN" flex mount "$POD" "$OPTS" >/tmp/reply || true; t1=$(now)
  jq -e '.status == "Success"' /tmp/reply >/dev/null || lab_die "moor flex mount: $(cat /tmp/reply)"
  moor_t+=("$(awk -v a="$t1" -v b="$t0" 'BEGIN{print a-b}')")
  lab_moor_flex unmount "$POD" >/dev/null
  key=$("$BIN" status -o json | jq -r '[.volumes[]? | select(.driver == "iscsi") | .key][0] // empty')
  [[ -z $key ]] || "$BIN" forget "$key" >/dev/null   # the LUN is wiped on purpose
  wipe
  t0=$(now)
  iscsiadm -m discovery -t sendtargets -p "$LAB_ISCSI_PORTAL" >/dev/null
  iscsiadm -m node $T --login >/dev/null
  while [[ -z $(lun_dev) ]]; do sleep 0.05; done
  dev=/dev/$(lun_dev)
  while [[ ! -b $dev ]]; do sleep 0.05; done
  mkfs.ext4 -q "$dev"; mount "$dev" /mnt/bench
  t1=$(now)
  bare_t+=("$(awk -v a="$t1" -v b="$t0" 'BEGIN{print a-b}')")
  umount /mnt/bench; iscsiadm -m node $T --logout >/dev/null
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
m=$(median "${moor_t[@]}") b=$(median "${bare_t[@]}")
ratio=$(awk -v m="$m" -v b="$b" 'BEGIN{printf "%.2f", m/b}')
echo "samples (s): moor ${moor_t[*]} | bare ${bare_t[*]}"
echo "bench iscsi attach+format+mount, ${LAB_ISCSI_SIZE_MB} MiB LUN (median of $N): moor ${m}s, iscsiadm+mkfs+mount ${b}s, ratio ${ratio}x (target <= 1.2x)"
lab_step "bench: moor ${m}s vs bare ${b}s = ${ratio}x"
