#!/bin/bash
# moor under systemd: notify readiness; restart with a moor~nfs and a moor~glusterfs (FUSE) volume published: the FUSE client lives in its own scope and survives, data stays readable, unmount works after the restart.
# vm: systemd=1 mem=1536 cpus=2 timeout=360
set -euo pipefail
. "$LAB_DIR/lib/lab.sh"
. "$LAB_DIR/lib/moor-node.sh"
. "$LAB_DIR/servers/nfs-server.sh"
. "$LAB_DIR/servers/gluster.sh"

lab_require_moor
lab_assert_eq "$(cat /proc/1/comm)" systemd "PID 1"
lab_install_moor
SOCKET=/run/moor/moor.sock

# --- start: Type=notify means `systemctl start` returns only after READY=1 -------
lab_assert_eq "$(systemctl show -P Type moor.service)" notify "moor.service Type"
lab_run lab_with_deadline 60 systemctl start moor.service
lab_assert_eq "$(systemctl is-active moor.service)" active "moor.service state"
# READY=1 must mean "serving": the socket answers the moment start returns.
lab_assert_eq "$(stat -c %F "$SOCKET" 2>/dev/null)" socket "$SOCKET after start"
lab_run "$MOOR" status >/dev/null
pid1=$(systemctl show -P MainPID moor.service)
lab_step "moor.service active (notify), pid $pid1, socket $SOCKET serving"

# --- an NFS volume published into a pod (moor~nfs) ------------------------------------
lab_nfs_server
DRIVER=nfs VOLUME=vol1 POD_UID=6f1c2a9e-lab0-4000-8000-000000000001
POD_DIR=$(lab_pod_volume_dir "$POD_UID" "$DRIVER" "$VOLUME")
mkdir -p "$POD_DIR"   # kubelet creates the directory before calling the driver
OPTIONS=$(jq -cn --arg s "$LAB_NFS_SERVER" --arg p "$LAB_NFS_EXPORT" --arg uid "$POD_UID" --arg vol "$VOLUME" '{
  server: $s, path: $p, mountOptions: "nfsvers=4.2", "kubernetes.io/fsType": "", "kubernetes.io/readwrite": "rw",
  "kubernetes.io/pod.uid": $uid, "kubernetes.io/pvOrVolumeName": $vol }')
lab_moor_flex mount "$POD_DIR" "$OPTIONS" >/dev/null
lab_assert_mounted "$POD_DIR" nfs4
lab_assert_file_eq "$POD_DIR/seed" "$LAB_NFS_SEED"
lab_step "NFS export published into $POD_DIR"

# --- a GlusterFS volume (FUSE) published into a pod --------------------------------------
lab_gluster_start
lab_on_exit lab_gluster_stop
lab_gluster_volume gv1
G_UID=6f1c2a9e-lab0-4000-8000-000000000002
G_DIR=$(lab_pod_volume_dir "$G_UID" glusterfs gv1)
mkdir -p "$G_DIR"
G_OPTIONS=$(jq -cn --arg e "$GLUSTER_SERVER" --arg uid "$G_UID" '{
  endpoints: $e, path: "gv1", "kubernetes.io/fsType": "", "kubernetes.io/readwrite": "rw",
  "kubernetes.io/pod.uid": $uid, "kubernetes.io/pvOrVolumeName": "gv1" }')
lab_moor_flex mount "$G_DIR" "$G_OPTIONS" >/dev/null
lab_assert_mounted "$G_DIR" fuse.glusterfs
echo fuse-before-restart > "$G_DIR/before"
g_stage=$(awk -v p="$LAB_KUBELET_DIR/plugins/moor/glusterfs/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo)
[[ -n $g_stage ]] || lab_die "no glusterfs stage mount"
g_pid=$(lab_gluster_client_pid "$g_stage") || lab_die "no glusterfs client holds /dev/fuse for $g_stage"
g_cgroup=$(cat "/proc/$g_pid/cgroup")
lab_log "FUSE client $g_pid cgroup: $g_cgroup"
[[ $g_cgroup != *moor.service* ]] || lab_die "the FUSE client runs in moor.service's cgroup: $g_cgroup"
[[ $g_cgroup == *.scope* ]] || lab_die "the FUSE client is not in a transient scope: $g_cgroup"
for fd in /proc/"$g_pid"/fd/0 /proc/"$g_pid"/fd/1 /proc/"$g_pid"/fd/2; do
  t=$(readlink "$fd" 2>/dev/null || true)
  [[ $t != pipe:* && $t != socket:* ]] || lab_die "the FUSE client holds a pipe/socket on $fd ($t): kubelet would wait for EOF"
done
lab_step "GlusterFS volume published into $G_DIR; its FUSE client $g_pid runs in its own scope, no inherited pipes"

# --- restart moor: the published mount must stay alive --------------------------
lab_run lab_with_deadline 60 systemctl restart moor.service
lab_assert_eq "$(systemctl is-active moor.service)" active "moor.service state after restart"
pid2=$(systemctl show -P MainPID moor.service)
[[ $pid2 != "$pid1" ]] || lab_die "MainPID did not change across restart ($pid1)"
lab_assert_mounted "$POD_DIR"
lab_assert_file_eq "$POD_DIR/seed" "$LAB_NFS_SEED"
echo written-after-restart > "$POD_DIR/after-restart"
lab_assert_file_eq "$LAB_NFS_EXPORT/after-restart" written-after-restart
[[ -d /proc/$g_pid ]] || lab_die "the FUSE client $g_pid died with the restart of moor"
lab_assert_mounted "$G_DIR" fuse.glusterfs
lab_assert_file_eq "$G_DIR/before" fuse-before-restart
echo fuse-after-restart > "$G_DIR/after"
lab_assert_file_eq "$G_DIR/after" fuse-after-restart
lab_step "after restart (pid $pid1 -> $pid2) the NFS and GlusterFS volumes still serve; FUSE client $g_pid survived"

# moor rebuilt its state: status still lists the pod's volume. The check is loose
# about the schema (some object has the pod directory as a value, exactly) but not
# fooled by an error message that merely mentions the path.
status_json=$(lab_with_deadline 30 "$MOOR" status -o json) || lab_die "moor status -o json failed"
printf '%s\n' "$status_json" > "$LAB_OUT/status-after-restart.json"
jq -e --arg d "$POD_DIR" '[.. | objects | select(any(.[]?; . == $d))] | length > 0' \
  <<< "$status_json" >/dev/null || lab_die "moor status does not list $POD_DIR after restart: $status_json"
lab_step "moor status lists $VOLUME ($POD_DIR) after restart"

# --- unpublish -------------------------------------------------------------------
lab_moor_flex unmount "$POD_DIR" >/dev/null
lab_assert_not_mounted "$POD_DIR"
lab_moor_flex unmount "$G_DIR" >/dev/null
lab_assert_not_mounted "$G_DIR"
lab_assert_not_mounted "$g_stage"
lab_wait_for 15 "FUSE client $g_pid exits after unmount" lab_pid_gone "$g_pid"
left=$(awk -v d="$LAB_KUBELET_DIR/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo)
[[ -z $left ]] || lab_die "mounts left under $LAB_KUBELET_DIR: $left"
lab_run systemctl stop moor.service
lab_step "unmount after the restart removed pod and stage mounts and the FUSE client; moor stopped cleanly"
