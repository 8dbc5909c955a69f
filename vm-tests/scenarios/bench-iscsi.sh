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
lab_iscsi_target plain
"$MOOR" daemon --metrics-addr off >/tmp/moor-daemon.log 2>&1 &
DAEMON=$!
lab_on_exit "kill $DAEMON 2>/dev/null || true"
lab_wait_for 20 "moor socket" test -S /run/moor/moor.sock
N=${BENCH_N:-3}
T="-T $LAB_ISCSI_IQN -p $LAB_ISCSI_PORTAL"
lun_dev() { ls /sys/class/iscsi_session/session*/device/target*/*:0/block/ 2>/dev/null | head -n 1; }
now() { date +%s.%N; }
wipe() { # blank the LUN so the next run formats again
  iscsiadm -m discovery -t sendtargets -p "$LAB_ISCSI_PORTAL" >/dev/null
  iscsiadm -m node $T -o update -n node.session.scan -v auto >/dev/null
  iscsiadm -m node $T --login >/dev/null
  lab_wait_for 20 disk sh -c '[ -n "$(ls /sys/class/iscsi_session/session*/device/target*/*:0/block/ 2>/dev/null)" ]'
  wipefs -qa "/dev/$(lun_dev)"
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
  t0=$(now); lab_moor_flex mount "$POD" "$OPTS" >/dev/null; t1=$(now)
  moor_t+=("$(awk -v a="$t1" -v b="$t0" 'BEGIN{print a-b}')")
  lab_moor_flex unmount "$POD" >/dev/null
  key=$("$MOOR" status -o json | jq -r '[.volumes[]? | select(.driver == "iscsi") | .key][0] // empty')
  [[ -z $key ]] || "$MOOR" forget "$key" >/dev/null   # the LUN is wiped on purpose
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
echo "bench iscsi attach+format+mount (median of $N): moor ${m}s, iscsiadm+mkfs+mount ${b}s, ratio ${ratio}x (target <= 1.2x)"
lab_step "bench: moor ${m}s vs bare ${b}s = ${ratio}x"
