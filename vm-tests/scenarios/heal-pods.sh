#!/bin/bash
# A healed GlusterFS share reaching running containers (Debian's containerd and runc): a container whose volume bind is rslave (mountPropagation HostToContainer) keeps reading through the FUSE client's death and reads the healed share once moor stacked it over the dead bind; a container with an rprivate bind (None) keeps "Transport endpoint is not connected" and is the one pod moor status and moor_dead_mount_pods report; after both containers end and the pods are unmounted nothing is left.
# vm: systemd=1 mem=1536 cpus=2 timeout=480
set -euo pipefail
. "$LAB_DIR/lib/lab.sh"
. "$LAB_DIR/lib/moor-node.sh"
. "$LAB_DIR/lib/moor-share.sh"
. "$LAB_DIR/servers/gluster.sh"

UID_H=aaaaaaaa-0000-4000-8000-0000000000a1
UID_N=aaaaaaaa-0000-4000-8000-0000000000a2
CTR=(ctr --namespace k8s.io)

lab_require_moor
lab_gluster_start
lab_on_exit lab_gluster_stop
lab_gluster_volume vol1
# kubelet's dir is a shared mount on a node (kubelet makes it so; moor doctor checks it).
mkdir -p "$LAB_KUBELET_DIR"
mount --bind "$LAB_KUBELET_DIR" "$LAB_KUBELET_DIR"
mount --make-rshared "$LAB_KUBELET_DIR"
share_daemon_start --mount-timeout-seconds 8
lab_run systemctl start containerd
lab_wait_for 60 "containerd answers" "${CTR[@]}" version
lab_step "glusterd with vol1, moor daemon, containerd running; $LAB_KUBELET_DIR rshared"

opts=$(jq -cn --arg e "$GLUSTER_SERVER" '{endpoints: $e, path: "vol1"}')
h=$(share_mount "$UID_H" glusterfs vol1 rw "$opts")
n=$(share_mount "$UID_N" glusterfs vol1 rw "$opts")
echo before > "$h/data"
stage=$(share_stage_of "$h")
pid=$(lab_gluster_client_pid "$stage") || lab_die "no glusterfs client for $stage"

# A root file system of the few programs the reader needs, from the guest's own.
mkroot() { # DIR
  local b p l
  mkdir -p "$1"/{bin,data,out,proc,dev,sys,tmp}
  for b in sh cat sleep mv; do
    p=$(command -v "$b")
    cp -L "$p" "$1/bin/$b"
    for l in $(ldd "$p" | grep -o '/[^ ]*'); do
      mkdir -p "$1$(dirname "$l")"
      cp -L "$l" "$1$l"
    done
  done
}
# A container reading /data/data every 0.2 s into /out/seen; its cgroup is named as
# kubelet's cgroupfs driver names a pod's, so moor can tell which pod it is.
run_reader() { # NAME UID POD_DIR PROPAGATION
  local root=/var/lib/heal-pods/$1 out=/var/lib/heal-pods/out-$1
  mkroot "$root"
  mkdir -p "$out"
  # `--rootfs` is a switch: the root file system's path takes the image's place (and with
  # no image there is no image config: no PATH either).
  "${CTR[@]}" run -d --cgroup "/kubepods/besteffort/pod$2/$1" \
    --mount "type=bind,src=$3,dst=/data,options=rbind:$4" \
    --mount "type=bind,src=$out,dst=/out,options=rbind:rprivate" \
    --env PATH=/bin --rootfs "$root" "$1" /bin/sh -c 'while :; do if v=$(cat /data/data 2>&1); then echo "$v"; else echo "ERR $v"; fi > /out/seen.new; mv /out/seen.new /out/seen; sleep 0.2; done' \
    </dev/null >/dev/null
  lab_on_exit "${CTR[*]} task kill -s KILL $1; sleep 1; ${CTR[*]} task delete $1; ${CTR[*]} container delete $1"
}
seen() { cat "/var/lib/heal-pods/out-$1/seen" 2>/dev/null; }
seen_is() { [[ $(seen "$1") == "$2" ]]; }
seen_err() { [[ $(seen "$1") == ERR* ]]; }
run_reader ctr-h "$UID_H" "$h" rslave
run_reader ctr-n "$UID_N" "$n" rprivate
lab_wait_for 20 "ctr-h reads the share" seen_is ctr-h before
lab_wait_for 20 "ctr-n reads the share" seen_is ctr-n before
lab_step "two running containers read the share: ctr-h (rslave, HostToContainer), ctr-n (rprivate, None)"

kill -9 "$pid"
lab_wait_for 10 "client $pid gone" lab_pid_gone "$pid"
lab_wait_for 10 "ctr-h sees the dead share" seen_err ctr-h
lab_wait_for 10 "ctr-n sees the dead share" seen_err ctr-n
lab_log "ctr-h after the kill: $(seen ctr-h)"
share_wait_healed 20 "$h/data" before
lab_wait_for 15 "the running ctr-h reads the healed share" seen_is ctr-h before
lab_step "client killed, moor healed: the running HostToContainer container reads again, no restart"
sleep 2
seen_err ctr-n || lab_die "ctr-n (rprivate) reads again? $(seen ctr-n)"
[[ $(seen ctr-n) == *"Transport endpoint is not connected"* ]] || lab_die "ctr-n: $(seen ctr-n)"
status=$("$MOOR" status)
lab_log "$status"
[[ $status == *"1 pod(s) still hold a dead mount"* && $status == *"$UID_N"* ]] ||
  lab_die "moor status does not report ctr-n's pod: $status"
dead=$(share_metric "moor_dead_mount_pods{driver=\"glusterfs\",namespace=\"\",pod=\"$UID_N\"}")
lab_assert_eq "$dead" 1 "moor_dead_mount_pods of pod $UID_N"
dead_h=$(share_metric "moor_dead_mount_pods{driver=\"glusterfs\",namespace=\"\",pod=\"$UID_H\"}")
lab_assert_eq "$dead_h" 0 "moor_dead_mount_pods of the healed pod $UID_H"
lab_step "the rprivate container keeps ENOTCONN and is the one pod reported (moor status, moor_dead_mount_pods)"

for c in ctr-h ctr-n; do
  "${CTR[@]}" task kill -s KILL "$c" </dev/null || true
done
lab_wait_for 20 "the containers ended" sh -c "! ${CTR[*]} task ls | grep -q RUNNING"
lab_wait_for 60 "the report cleared" sh -c "! '$MOOR' status | grep -q 'still hold a dead mount'"
lab_moor_flex unmount "$h" >/dev/null 2>&1
lab_moor_flex unmount "$n" >/dev/null 2>&1
lab_assert_not_mounted "$h"
lab_assert_not_mounted "$n"
share_assert_clean glusterfs
lab_step "containers ended: report cleared; pods unmounted (the stacked layer and the bind under it), nothing of glusterfs left"
