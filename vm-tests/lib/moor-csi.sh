# shellcheck shell=bash
# moor-csi.sh — the CSI scenarios' helpers: `moor daemon` with its CSI front end on, driven
# through tests/csi/moor_csi.py (Python grpcio, stubs compiled from proto/csi.proto at run
# time: no moor code) over each driver's socket, the way kubelet drives it — kubelet's
# staging and target paths, kubelet's mkdirs, kubelet's volume_context.
#
#   csi_daemon_start DRIVER… [-- FLAGS…]
#                          write a config with csi on, start the daemon through
#                          share_daemon_start (moor-share.sh) and wait until every named
#                          driver's socket answers Probe ready
#   csi_daemon_kill        SIGKILL the daemon (no drain), wait until it is gone
#   csi_socket DRIVER      <kubelet>/plugins/DRIVER.csi.moor.io/csi.sock
#   csi_staging DRIVER VOLUME_ID   kubelet's staging_target_path of a filesystem volume
#                          (.../kubernetes.io/csi/<driver>/<sha256 of the volume id>/globalmount)
#   csi_block_staging PV   kubelet's staging path of a raw block volume (volumeDevices/staging/PV)
#   csi_target UID PV      kubelet's target_path of a filesystem volume (pods/UID/volumes/kubernetes.io~csi/PV/mount)
#   csi_block_target PV UID   kubelet's target_path of a raw block volume (volumeDevices/publish/PV/UID)
#   csi DRIVER RPC ARGS…   one call (moor_csi.py flags); prints the reply JSON; dies naming
#                          the RPC, the gRPC code and the message when it fails
#   csi_fails CODE DRIVER RPC ARGS…   the call fails with gRPC CODE; prints its message
#   csi_stage DRIVER VOLUME_ID STAGING ARGS…   mkdir STAGING (kubelet does), NodeStageVolume
#   csi_publish DRIVER VOLUME_ID STAGING TARGET ARGS…   mkdir TARGET's parent (kubelet does;
#                          moor makes TARGET), NodePublishVolume
#   csi_stage_publish DRIVER VOLUME_ID STAGING TARGET UID ARGS…   both, for pod UID
#   csi_unpublish DRIVER VOLUME_ID TARGET   NodeUnpublishVolume; TARGET is then unmounted and gone
#   csi_unstage DRIVER VOLUME_ID STAGING    NodeUnstageVolume; nothing mounted at STAGING
#   csi_stats DRIVER VOLUME_ID PATH         NodeGetVolumeStats reply JSON
#   csi_usage JSON UNIT FIELD               BYTES|INODES total|available|used of a stats reply
#   csi_wait_condition SECS DRIVER VOLUME_ID PATH true|false
#                          until VolumeCondition.abnormal is the wanted value; prints the reply
#   csi_block_write FILE OFFSET   write 1 MiB of random data through FILE (a raw block
#                          publish) at byte OFFSET, O_DIRECT + fsync; prints its sha256
#   csi_block_expect SOURCE OFFSET SHA256   SOURCE (the LUN's or image's own store, read
#                          apart from moor) holds that 1 MiB at OFFSET
#
# Settings: CSI_PYTHON (default /usr/bin/python3: Debian's, with python3-grpcio),
# CSI_CLIENT (default tests/csi/moor_csi.py of the lab share), MOOR_CSI_STUB_CACHE (where the
# client keeps the stubs it generates, default $LAB_STATE/csi-stubs).
# shellcheck source=lab.sh
. "$(dirname "${BASH_SOURCE[0]}")/lab.sh"
# shellcheck source=moor-share.sh
. "$(dirname "${BASH_SOURCE[0]}")/moor-share.sh"

CSI_PYTHON=${CSI_PYTHON:-/usr/bin/python3}
# protoc once per guest, not per call (a TCG guest pays seconds for each).
export MOOR_CSI_STUB_CACHE=${MOOR_CSI_STUB_CACHE:-$LAB_STATE/csi-stubs}
CSI_CLIENT=${CSI_CLIENT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/tests/csi/moor_csi.py}

csi_socket() { echo "$LAB_KUBELET_DIR/plugins/$1.csi.moor.io/csi.sock"; }
csi_staging() {
  echo "$LAB_KUBELET_DIR/plugins/kubernetes.io/csi/$1.csi.moor.io/$(printf %s "$2" | sha256sum | cut -d' ' -f1)/globalmount"
}
csi_block_staging() { echo "$LAB_KUBELET_DIR/plugins/kubernetes.io/csi/volumeDevices/staging/$1"; }
csi_target() { echo "$LAB_KUBELET_DIR/pods/$1/volumes/kubernetes.io~csi/$2/mount"; }
csi_block_target() { echo "$LAB_KUBELET_DIR/plugins/kubernetes.io/csi/volumeDevices/publish/$1/$2"; }

# _csi_run DRIVER RPC ARGS… — one client run: its stdout in CSI_OUT, its stderr in CSI_ERR
# (globals: a command substitution would lose them), its exit status returned.
CSI_OUT="" CSI_ERR=""
_csi_run() {
  local driver=$1 rpc=$2 tmp rc=0
  shift 2
  tmp=$(mktemp -d)
  lab_with_deadline 150 "$CSI_PYTHON" "$CSI_CLIENT" --socket "$(csi_socket "$driver")" --timeout 120 \
    "$rpc" "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
  CSI_OUT=$(cat "$tmp/out") CSI_ERR=$(cat "$tmp/err")
  rm -rf "$tmp"
  return "$rc"
}

csi() {
  local driver=$1 rpc=$2 rc=0
  _csi_run "$@" || rc=$?
  # Secrets are on the client's command line only; the log line leaves them out.
  lab_log "csi $driver $rpc -> ${CSI_OUT:-$CSI_ERR}"
  ((rc == 0)) || lab_die "$rpc on $driver.csi.moor.io failed (exit $rc): $CSI_ERR"
  printf '%s\n' "$CSI_OUT"
}

csi_fails() {
  local want=$1 driver=$2 rpc=$3 rc=0
  shift
  _csi_run "$@" || rc=$?
  lab_log "csi $driver $rpc (want $want) -> ${CSI_OUT:-$CSI_ERR}"
  ((rc == 1)) || lab_die "$rpc on $driver.csi.moor.io should have failed with $want, got exit $rc: ${CSI_OUT:-$CSI_ERR}"
  [[ $CSI_ERR == "$want: "* ]] || lab_die "$rpc on $driver.csi.moor.io: want $want, got: $CSI_ERR"
  printf '%s\n' "${CSI_ERR#"$want: "}"
}

CSI_CONFIG=""
csi_daemon_start() {
  local drivers=() d
  while (($#)) && [[ $1 != -- ]]; do drivers+=("$1"); shift; done
  (($#)) && shift
  CSI_CONFIG=$LAB_STATE/moor-csi.yaml
  printf 'csi:\n  enabled: true\n' > "$CSI_CONFIG"
  share_daemon_start --config "$CSI_CONFIG" "$@"
  for d in "${drivers[@]}"; do
    lab_wait_for 30 "$d.csi.moor.io answering Probe ready" \
      sh -c "'$CSI_PYTHON' '$CSI_CLIENT' --socket '$(csi_socket "$d")' --timeout 5 Probe | jq -e '.ready.value == true'"
  done
}

csi_daemon_kill() {
  [[ -n $SHARE_DAEMON_PID ]] || lab_die "no daemon to kill"
  kill -KILL "$SHARE_DAEMON_PID"
  wait "$SHARE_DAEMON_PID" 2>/dev/null || true
  lab_wait_for 10 "daemon $SHARE_DAEMON_PID gone" lab_pid_gone "$SHARE_DAEMON_PID"
  SHARE_DAEMON_PID=""
}

csi_stage() {
  local driver=$1 vol=$2 staging=$3
  shift 3
  mkdir -p "$staging"
  csi "$driver" NodeStageVolume --volume-id "$vol" --staging "$staging" "$@" >/dev/null
  # moor stages at its own directory: kubelet's staging path stays an empty directory.
  lab_assert_not_mounted "$staging"
}

csi_publish() {
  local driver=$1 vol=$2 staging=$3 target=$4
  shift 4
  mkdir -p "$(dirname "$target")"
  csi "$driver" NodePublishVolume --volume-id "$vol" --staging "$staging" --target "$target" "$@" >/dev/null
  lab_assert_mounted "$target"
}

csi_stage_publish() {
  local driver=$1 vol=$2 staging=$3 target=$4 uid=$5
  shift 5
  csi_stage "$driver" "$vol" "$staging" "$@"
  csi_publish "$driver" "$vol" "$staging" "$target" "$@" --pod-uid "$uid"
}

csi_unpublish() {
  local driver=$1 vol=$2 target=$3
  csi "$driver" NodeUnpublishVolume --volume-id "$vol" --target "$target" >/dev/null
  lab_assert_not_mounted "$target"
  [[ ! -e $target ]] || lab_die "NodeUnpublishVolume left $target behind"
}

csi_unstage() {
  local driver=$1 vol=$2 staging=$3
  csi "$driver" NodeUnstageVolume --volume-id "$vol" --staging "$staging" >/dev/null
  lab_assert_not_mounted "$staging"
}

csi_stats() { csi "$1" NodeGetVolumeStats --volume-id "$2" --volume-path "$3"; }

csi_usage() {
  jq -er --arg u "$2" --arg f "$3" '[.usage[] | select(.unit == $u)][0][$f]' <<< "$1" \
    || lab_die "no $2 $3 in the stats reply: $1"
}

csi_wait_condition() {
  local secs=$1 driver=$2 vol=$3 path=$4 want=$5
  lab_wait_for "$secs" "VolumeCondition.abnormal=$want for $vol" sh -c \
    "'$CSI_PYTHON' '$CSI_CLIENT' --socket '$(csi_socket "$driver")' --timeout 20 NodeGetVolumeStats \
       --volume-id '$vol' --volume-path '$path' | jq -e '.volume_condition.abnormal == $want'"
  csi_stats "$driver" "$vol" "$path"
}

csi_block_write() {
  local file=$1 offset=$2 pattern
  pattern=$(mktemp)
  head -c 1048576 /dev/urandom > "$pattern"
  lab_with_deadline 60 dd if="$pattern" of="$file" bs=1M oflag=direct,seek_bytes seek="$offset" \
    conv=fsync,notrunc status=none || lab_die "write through the raw block publish $file failed"
  sha256sum < "$pattern" | cut -d' ' -f1
  rm -f "$pattern"
}

csi_block_expect() {
  local source=$1 offset=$2 want=$3 got
  got=$(lab_with_deadline 60 dd if="$source" bs=1M iflag=skip_bytes skip="$offset" count=1 status=none \
    | sha256sum | cut -d' ' -f1)
  [[ $got == "$want" ]] || lab_die "the 1 MiB written through the publish at offset $offset is not in $source"
}
