#!/bin/bash
# glusterfs.csi.moor.io driven by an independent Python gRPC client as kubelet drives it: one FUSE client staged for the volume, published rw and read-only into pods, a write through a target lands on the brick, NodeGetVolumeStats bytes are the volume's, VolumeCondition abnormal while the brick is killed and normal once it is back, a second volume_id for the same volume refused, unpublish/unstage leave no mount and no client.
# vm: mem=1536 cpus=2 timeout=420
set -euo pipefail
. "$LAB_DIR/lib/moor-csi.sh"
. "$LAB_DIR/servers/gluster.sh"

lab_require_moor
lab_gluster_start
lab_on_exit lab_gluster_stop
lab_gluster_volume vol1
BRICK=$GLUSTER_DIR/bricks/vol1-b1/data
[[ -d $BRICK ]] || lab_die "no brick directory $BRICK"
csi_daemon_start glusterfs -- --mount-timeout-seconds 8
lab_step "glusterd on $GLUSTER_SERVER with vol1 (brick $BRICK); glusterfs.csi.moor.io ready"

VOL=gluster-pv-0001 PV=pv-gluster-0001
UID1=c5200002-0000-4000-8000-000000000001
UID2=c5200002-0000-4000-8000-000000000002
ATTRS=(--attr "endpoints=$GLUSTER_SERVER" --attr path=vol1 --access-mode MULTI_NODE_MULTI_WRITER)
STAGING=$(csi_staging glusterfs "$VOL")
csi_stage glusterfs "$VOL" "$STAGING" "${ATTRS[@]}"
stage=$(awk -v p="$LAB_KUBELET_DIR/plugins/moor/glusterfs/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo)
lab_assert_eq "$(wc -l <<< "$stage")" 1 "moor's stage mounts of $VOL"
lab_assert_mounted "$stage" fuse.glusterfs
pid=$(lab_gluster_client_pid "$stage") || lab_die "no glusterfs client for $stage"
lab_step "NodeStageVolume: one FUSE client ($pid) at moor's stage $stage; kubelet's staging path left empty"

T1=$(csi_target "$UID1" "$PV") T2=$(csi_target "$UID2" "$PV")
csi_publish glusterfs "$VOL" "$STAGING" "$T1" "${ATTRS[@]}" --pod-uid "$UID1"
csi_publish glusterfs "$VOL" "$STAGING" "$T2" "${ATTRS[@]}" --pod-uid "$UID2" --readonly
lab_assert_mounted "$T1" fuse.glusterfs
echo written-through-csi > "$T1/from-pod1"
lab_assert_file_eq "$BRICK/from-pod1" written-through-csi
lab_assert_file_eq "$T2/from-pod1" written-through-csi
share_assert_erofs "$T2"
lab_assert_eq "$(lab_gluster_client_pid "$stage")" "$pid" "FUSE client after two publishes"
lab_step "NodePublishVolume rw and readonly: pod 1's write is on the brick, pod 2 reads it and gets EROFS; still one client"

# Another volume_id for the same volume (same attributes, so the same volume key).
VOL2=gluster-pv-0002 STAGING2=$(csi_staging glusterfs gluster-pv-0002)
mkdir -p "$STAGING2"
msg=$(csi_fails FAILED_PRECONDITION glusterfs NodeStageVolume --volume-id "$VOL2" --staging "$STAGING2" "${ATTRS[@]}")
[[ $msg == key_in_use:* ]] || lab_die "a second volume_id for vol1's key: $msg"
lab_step "a second volume_id for the same volume key: FAILED_PRECONDITION ($msg)"

# --- teardown -----------------------------------------------------------------------
assert_clean() {
  share_assert_clean glusterfs
  lab_wait_for 15 "no glusterfs client left" bash -c "! pgrep -x glusterfs"
  lab_assert_file_eq "$BRICK/from-pod1" written-through-csi
}
csi_unpublish glusterfs "$VOL" "$T1"
csi_unpublish glusterfs "$VOL" "$T2"
csi_unstage glusterfs "$VOL" "$STAGING"
assert_clean
lab_step "unpublish + unstage: no mount, no stage, no client process; the data stays on the brick"

# --- health: staged and published again ----------------------------------------------
csi_stage_publish glusterfs "$VOL" "$STAGING" "$T1" "$UID1" "${ATTRS[@]}"
csi_publish glusterfs "$VOL" "$STAGING" "$T2" "${ATTRS[@]}" --pod-uid "$UID2" --readonly
lab_assert_file_eq "$T2/from-pod1" written-through-csi
lab_step "staged and published again after the unstage: the data is still there (read-only pod)"

# --- stats: the volume's size, as the brick's filesystem has it -------------------------
st=$(csi_stats glusterfs "$VOL" "$T1")
total=$(csi_usage "$st" BYTES total) used=$(csi_usage "$st" BYTES used)
srv_total=$(stat -f -c '%b %S' "$BRICK" | awk '{ print $1 * $2 }')
awk -v a="$total" -v b="$srv_total" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(b > 0 && d <= b / 100) }' \
  || lab_die "stats total $total bytes, the brick's filesystem has $srv_total"
((used > 0 && used <= total)) || lab_die "stats: used $used of $total"
csi_wait_condition 20 glusterfs "$VOL" "$T1" false >/dev/null
lab_step "NodeGetVolumeStats: $total bytes ($used used) = the brick's filesystem; condition normal"

# --- the share dies: the brick is killed ----------------------------------------------
lab_gluster brick-kill vol1
t0=$(date +%s)
st=$(csi_wait_condition 60 glusterfs "$VOL" "$T1" true)
lab_step "brick killed: VolumeCondition abnormal after $(( $(date +%s) - t0 )) s: $(jq -r .volume_condition.message <<< "$st")"
lab_gluster brick-start vol1
t0=$(date +%s)
csi_wait_condition 60 glusterfs "$VOL" "$T1" false >/dev/null
share_wait_healed 20 "$T2/from-pod1" written-through-csi
echo after-brick > "$T1/after-brick"
lab_assert_file_eq "$BRICK/after-brick" after-brick
lab_step "brick back: condition normal after $(( $(date +%s) - t0 )) s; pods read and write again"

csi_unpublish glusterfs "$VOL" "$T1"
csi_unpublish glusterfs "$VOL" "$T2"
csi_unstage glusterfs "$VOL" "$STAGING"
assert_clean
share_daemon_stop
lab_step "unpublish + unstage after the outage: no mount, stage or client left"
