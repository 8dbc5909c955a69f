#!/bin/bash
# moor~glusterfs: a GlusterFS volume staged once through the FUSE client (backup-volfile-servers without the mounting host, log beside the stage, auto_unmount), published rw and ro into pods, healed after the client process is killed, a failed mount explained by the client log tail, a blackholed server fails within the deadline without blocking another mount, nothing left after the last unmount.
# vm: mem=1536 cpus=2 timeout=420
set -euo pipefail
. "$LAB_DIR/lib/lab.sh"
. "$LAB_DIR/lib/moor-node.sh"
. "$LAB_DIR/lib/moor-share.sh"
. "$LAB_DIR/servers/gluster.sh"

lab_require_moor
lab_gluster_start
lab_on_exit lab_gluster_stop
lab_gluster_volume vol1
share_daemon_start --mount-timeout-seconds 8
lab_step "glusterd on $GLUSTER_SERVER with vol1; moor daemon running"

# The dead address first: moor mounts from it, so backup-volfile-servers must carry the
# live one; the mount succeeds through the backup.
opts=$(jq -cn --arg e "$GLUSTER_DEAD_SERVER,$GLUSTER_SERVER" '{endpoints: $e, path: "vol1"}')
opts_live=$(jq -cn --arg e "$GLUSTER_SERVER,$GLUSTER_DEAD_SERVER" '{endpoints: $e, path: "vol1"}')
a=$(share_mount aaaaaaaa-0000-4000-8000-000000000001 glusterfs vol1 rw "$opts_live")
b=$(share_mount bbbbbbbb-0000-4000-8000-000000000002 glusterfs vol1 rw "$opts_live")
c=$(share_mount cccccccc-0000-4000-8000-000000000003 glusterfs vol1 ro "$opts_live")
lab_assert_mounted "$a" fuse.glusterfs
stage=$(share_stage_of "$a")
[[ -n $stage && $(share_stage_of "$c") == "$stage" ]] || lab_die "pods do not share one stage"
pid=$(lab_gluster_client_pid "$stage") || lab_die "no glusterfs client for $stage"
cmdline=$(tr '\0' ' ' < "/proc/$pid/cmdline")
lab_log "client: $cmdline"
[[ $cmdline == *"--volfile-server=$GLUSTER_SERVER "* ]] || lab_die "client does not mount from $GLUSTER_SERVER: $cmdline"
[[ $cmdline == *"--volfile-server=$GLUSTER_DEAD_SERVER "* ]] || lab_die "backup server missing: $cmdline"
[[ $(grep -o -- "--volfile-server=$GLUSTER_SERVER " <<< "$cmdline" | wc -l) == 1 ]] || lab_die "mounting host repeated as a backup: $cmdline"
[[ $cmdline == *"--log-level=ERROR"* ]] || lab_die "log-level not ERROR: $cmdline"
log="$LAB_KUBELET_DIR/plugins/moor/glusterfs/$(basename "$stage").log"
[[ $cmdline == *"--log-file=$log"* ]] || lab_die "client log not at $log: $cmdline"
[[ $cmdline == *"auto_unmount"* ]] || lab_die "no auto_unmount: $cmdline"
echo gluster-a > "$a/from-a"
lab_assert_file_eq "$b/from-a" gluster-a
lab_assert_file_eq "$c/from-a" gluster-a
share_assert_erofs "$c"
echo gluster-b > "$b/from-b"
lab_assert_file_eq "$a/from-b" gluster-b
lab_step "one FUSE client ($pid) for three pods: backups exclude the mounting host, log at $log; a writes, b and c read; ro c gets EROFS while rw b writes"

# --- dead primary: the backup volfile server serves --------------------------------
d=$(share_mount dddddddd-0000-4000-8000-000000000004 glusterfs vol1b rw "$opts")
lab_assert_file_eq "$d/from-a" gluster-a
lab_moor_flex unmount "$d" >/dev/null 2>&1
lab_step "endpoints with a dead first host: mounted through backup-volfile-servers"

# --- healing: the FUSE client is killed ---------------------------------------------
heals0=$(share_metric 'moor_heals_total{')
kill -9 "$pid"
lab_wait_for 10 "client $pid gone" lab_pid_gone "$pid"
err=$(lab_with_deadline 10 ls "$a" 2>&1 >/dev/null || true)
lab_log "right after the kill, ls $a: ${err:-ok}"
# HEALING (needs the reconciler from main's "Healing:" commit)
share_wait_healed 10 "$a/from-a" gluster-a
share_wait_healed 10 "$c/from-b" gluster-b
echo after-heal > "$b/after-heal"
lab_assert_file_eq "$a/after-heal" after-heal
share_assert_erofs "$c"
newpid=$(lab_gluster_client_pid "$stage") || lab_die "no glusterfs client after healing"
[[ $newpid != "$pid" ]] || lab_die "same client pid after healing?"
heals1=$(share_metric 'moor_heals_total{')
awk -v a="$heals0" -v b="$heals1" 'BEGIN { exit !(b > a) }' || lab_die "moor_heals_total did not grow ($heals0 -> $heals1)"
lab_step "client killed: pods readable again within 10 s with data intact (new client $newpid), ro kept"

for x in "$a" "$b" "$c"; do
  lab_moor_flex unmount "$x" >/dev/null 2>&1
  lab_assert_not_mounted "$x"
done
share_assert_clean glusterfs
lab_wait_for 10 "no glusterfs client left" bash -c "! pgrep -x glusterfs"
lab_step "after the last unmount: nothing mounted, no client process, no log left"

# --- a failed mount carries the client log's tail ------------------------------------
d=$(lab_pod_volume_dir ffffffff-0000-4000-8000-000000000006 glusterfs novol)
mkdir -p "$d"
reply=$("$MOOR" flex mount "$d" "$(share_opts ffffffff-0000-4000-8000-000000000006 novol rw \
  "$(jq -cn --arg e "$GLUSTER_SERVER" '{endpoints: $e, path: "no-such-volume"}')")" || true)
lab_log "reply: $reply"
[[ $(jq -r .status <<< "$reply") == Failure ]] || lab_die "mount of a missing volume did not fail: $reply"
msg=$(jq -r .message <<< "$reply")
[[ $msg == *"$GLUSTER_SERVER"* ]] || lab_die "message does not name the server: $msg"
[[ $msg == *"E ["* || $msg == *"failed"* ]] || lab_die "message carries no client log: $msg"
share_assert_clean glusterfs
lab_step "missing volume: Failure naming the server with the client log's tail; nothing left"

# --- deadline: a blackholed server ---------------------------------------------------
dead=$(jq -cn '{endpoints: "10.99.99.98", path: "vol1"}')
share_deadline_check glusterfs "$dead" 10.99.99.98 glusterfs "$opts_live" from-a gluster-a 20
share_assert_clean glusterfs
lab_wait_for 15 "no glusterfs client of the blackholed server left" bash -c "! pgrep -f 'volfile-server=10[.]99[.]99[.]98'"
lab_step "blackholed server: failure names it within the deadline, no mount, stage, record or client left; another mount meanwhile not blocked"
share_daemon_stop
