# shellcheck shell=bash
# moor-share.sh — helpers for the shared-filesystem scenarios (nfs, glusterfs, cephfs):
# run `moor daemon` in the background (no systemd), build kubelet's JSON for a pod,
# and the checks every share scenario makes.
#
#   share_daemon_start [FLAGS…]     moor daemon --reconcile-interval-seconds 2 FLAGS…, log in
#                                   $LAB_OUT/moor-daemon.log; returns when the socket serves
#   share_opts UID VOL RW JSON      kubelet's mount JSON: JSON (user options) + pod keys
#   share_mount UID DRIVER VOL RW JSON   mkdir the pod dir, flex mount; prints the pod dir
#   share_assert_erofs DIR          a write into DIR fails with EROFS
#   share_assert_clean DRIVER       nothing of DRIVER left under kubelet's plugin dir
#   share_wait_healed SECS FILE WANT   FILE reads WANT within SECS
# shellcheck source=lab.sh
. "$(dirname "${BASH_SOURCE[0]}")/lab.sh"
# shellcheck source=moor-node.sh
. "$(dirname "${BASH_SOURCE[0]}")/moor-node.sh"

SHARE_DAEMON_PID=""
share_daemon_start() {
  mkdir -p "$LAB_KUBELET_DIR"
  "$MOOR" daemon --kubelet-dir "$LAB_KUBELET_DIR" --reconcile-interval-seconds 2 "$@" \
    >> "$LAB_OUT/moor-daemon.log" 2>&1 &
  SHARE_DAEMON_PID=$!
  lab_on_exit "kill $SHARE_DAEMON_PID"
  lab_wait_for 30 "moor daemon serving" "$MOOR" status
}

share_daemon_stop() {
  [[ -n $SHARE_DAEMON_PID ]] || return 0
  kill "$SHARE_DAEMON_PID" 2>/dev/null || true
  wait "$SHARE_DAEMON_PID" 2>/dev/null || true
  SHARE_DAEMON_PID=""
}

share_opts() {
  local uid=$1 vol=$2 rw=$3 json=$4
  jq -c --arg uid "$uid" --arg vol "$vol" --arg rw "$rw" \
    '. + {"kubernetes.io/fsType": "", "kubernetes.io/readwrite": $rw,
          "kubernetes.io/pod.uid": $uid, "kubernetes.io/pod.name": ("pod-" + $uid[0:8]),
          "kubernetes.io/pod.namespace": "default", "kubernetes.io/pvOrVolumeName": $vol}' <<< "$json"
}

share_mount() {
  local uid=$1 driver=$2 vol=$3 rw=$4 json=$5 dir
  dir=$(lab_pod_volume_dir "$uid" "$driver" "$vol")
  mkdir -p "$dir"
  lab_moor_flex mount "$dir" "$(share_opts "$uid" "$vol" "$rw" "$json")" >/dev/null 2>&1 \
    || lab_die "flex mount $dir failed"
  echo "$dir"
}

share_assert_erofs() {
  local err
  if err=$(lab_with_deadline 20 sh -c "echo x > '$1/erofs-probe'" 2>&1); then
    lab_die "write into read-only $1 succeeded"
  fi
  [[ $err == *"Read-only file system"* ]] || lab_die "write into $1 failed, but not with EROFS: $err"
}

share_assert_clean() {
  local driver=$1 left
  left=$(awk -v d="$LAB_KUBELET_DIR/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo)
  [[ -z $left ]] || lab_die "mounts left under $LAB_KUBELET_DIR: $left"
  left=$(find "$LAB_KUBELET_DIR/plugins/moor/$driver" -mindepth 1 2>/dev/null || true)
  [[ -z $left ]] || lab_die "files left in the $driver plugin dir: $left"
}

share_wait_healed() {
  local secs=$1 file=$2 want=$3
  lab_wait_for "$secs" "$file readable again (healed)" \
    sh -c "[ \"\$(timeout 3 cat '$file')\" = '$want' ]"
}

# share_metric NAME_PREFIX — sum of the samples of a metric family on /metrics.
share_metric() {
  # No curl in the image: HTTP/1.0 over bash's /dev/tcp.
  lab_with_deadline 10 bash -c 'exec 3<>/dev/tcp/127.0.0.1/9477; printf "GET /metrics HTTP/1.0\r\n\r\n" >&3; cat <&3' 2>/dev/null \
    | awk -v m="$1" 'index($1, m) == 1 { s += $2 } END { print s + 0 }'
}

# share_deadline_check DRIVER JSON_DEAD SERVER DRIVER2 JSON_OK WANT_FILE WANT
# A mount of an unreachable (packets dropped) server fails within the mount deadline, names the server,
# leaves nothing behind, and a mount of another volume meanwhile is not blocked by it.
share_deadline_check() {
  local driver=$1 dead=$2 server=$3 driver2=$4 ok=$5 file=$6 want=$7 limit=$8
  local d1 d2 t0 t1 t2 reply pid
  # `ip route add blackhole` fails connect() at once (EINVAL: mount.nfs even calls it "an
  # incorrect mount option"); a route into a dummy device drops the packets silently, so
  # the client hangs the way it does when a server vanishes from the network.
  lab_modprobe dummy
  ip link show moor-void >/dev/null 2>&1 || lab_run ip link add moor-void type dummy
  lab_run ip link set moor-void up
  lab_run ip route replace "$server/32" dev moor-void
  d1=$(lab_pod_volume_dir dead0000-0000-4000-8000-000000000001 "$driver" dead)
  mkdir -p "$d1"
  t0=$(date +%s.%N)
  ( lab_with_deadline 120 "$MOOR" flex mount "$d1" "$(share_opts dead0000-0000-4000-8000-000000000001 dead rw "$dead")" \
      > "$LAB_OUT/deadline-reply.json" 2>&1 || true; date +%s.%N > "$LAB_OUT/deadline-end" ) &
  pid=$!
  sleep 1
  d2=$(share_mount 0c0c0c0c-0000-4000-8000-000000000002 "$driver2" other rw "$ok")
  t1=$(date +%s.%N)
  lab_assert_file_eq "$d2/$file" "$want"
  wait "$pid" || true
  t2=$(cat "$LAB_OUT/deadline-end")
  reply=$(cat "$LAB_OUT/deadline-reply.json")
  lab_log "dead mount: $(awk -v a="$t0" -v b="$t2" 'BEGIN { print b - a }') s; other mount done after $(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }') s; reply: $reply"
  [[ $(jq -r .status <<< "$reply") == Failure ]] || lab_die "mount of blackholed $server did not fail: $reply"
  [[ $(jq -r .message <<< "$reply") == *"$server"* ]] || lab_die "failure message does not name $server: $reply"
  awk -v a="$t0" -v b="$t2" -v l="$limit" 'BEGIN { exit !(b - a <= l) }' \
    || lab_die "blackholed mount took longer than ${limit}s"
  awk -v a="$t0" -v b="$t1" -v e="$t2" 'BEGIN { exit !(b < e) }' \
    || lab_die "the other volume's mount waited for the blackholed one"
  lab_assert_not_mounted "$d1"
  if awk -v s="$server" 'index($0, s) { f = 1 } END { exit !f }' /proc/self/mountinfo; then
    lab_die "a mount of $server is left"
  fi
  "$MOOR" status -o json | grep -q "$server" && lab_die "moor still records a volume of $server"
  local stages
  stages=$(find "$LAB_KUBELET_DIR/plugins/moor/$driver" -mindepth 1 -maxdepth 1 2>/dev/null | grep -v "$(basename "$(share_stage_of "$d2")")" || true)
  [[ -z $stages ]] || lab_die "stage dirs left after the failed mount: $stages"
  lab_moor_flex unmount "$d2" >/dev/null 2>&1
  rmdir "$d1" 2>/dev/null || true
  lab_run ip route del "$server/32" dev moor-void
}

# share_stage_of POD_DIR — the stage a pod dir is bound from (its mount source root).
share_stage_of() {
  local dev
  dev=$(awk -v d="$1" '$5 == d { print $3 }' /proc/self/mountinfo | head -n 1)
  awk -v dev="$dev" -v p="$LAB_KUBELET_DIR/plugins/moor/" '$3 == dev && index($5, p) == 1 { print $5 }' /proc/self/mountinfo | head -n 1
}
