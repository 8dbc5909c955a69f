#!/bin/bash
# nfs.csi.moor.io driven by an independent Python gRPC client as kubelet drives it: staged once (nothing mounted at kubelet's staging path), published rw into two pods and read-only into a third, a write through a target lands in the export, NodeGetVolumeStats bytes/inodes are the export's, VolumeCondition abnormal while nfsd is stopped and normal again once it is back, the same volume_id with another export refused, unpublish/unstage idempotent and leave no mount.
# vm: timeout=420
set -euo pipefail
. "$LAB_DIR/lib/moor-csi.sh"
. "$LAB_DIR/servers/nfs-server.sh"

lab_require_moor
lab_nfs_server
lab_on_exit lab_nfs_server_stop
# nfsd is stopped below: make sure it runs again for the cleanups' unmounts.
lab_on_exit 'rpc.nfsd 8'
csi_daemon_start nfs -- --mount-timeout-seconds 8
info=$(csi nfs GetPluginInfo)
lab_assert_eq "$(jq -r .name <<< "$info")" nfs.csi.moor.io "plugin name on the nfs socket"
caps=$(csi nfs NodeGetCapabilities | jq -r '[.capabilities[].rpc.type] | join(" ")')
for c in STAGE_UNSTAGE_VOLUME GET_VOLUME_STATS VOLUME_CONDITION; do
  [[ " $caps " == *" $c "* ]] || lab_die "NodeGetCapabilities lacks $c: $caps"
done
lab_step "nfs server on $LAB_NFS_SERVER:$LAB_NFS_EXPORT; moor daemon with CSI on, nfs.csi.moor.io ready ($caps)"

VOL=nfs-pv-0001 PV=pv-nfs-0001
UID1=c5100001-0000-4000-8000-000000000001
UID2=c5100001-0000-4000-8000-000000000002
UID3=c5100001-0000-4000-8000-000000000003
# The PV's volumeAttributes (FlexVolume's option names), its mountOptions as the
# capability's mount flags, a shared access mode.
ATTRS=(--attr "server=$LAB_NFS_SERVER" --attr "path=$LAB_NFS_EXPORT"
  --mount-flag nfsvers=4.1 --mount-flag timeo=20 --mount-flag retrans=2 --access-mode MULTI_NODE_MULTI_WRITER)
STAGING=$(csi_staging nfs "$VOL")
csi_stage nfs "$VOL" "$STAGING" "${ATTRS[@]}"
csi_stage nfs "$VOL" "$STAGING" "${ATTRS[@]}"   # kubelet retries: the same stage answers OK
stages=$(awk -v p="$LAB_KUBELET_DIR/plugins/moor/nfs/" 'index($5, p) == 1 { print $5 " " $0 }' /proc/self/mountinfo)
lab_assert_eq "$(wc -l <<< "$stages")" 1 "moor's stage mounts of $VOL"
grep -q 'vers=4.1' <<< "$stages" || lab_die "stage not mounted with the mount flag nfsvers=4.1: $stages"
lab_step "NodeStageVolume: one nfs4 stage under moor's own dir (flags applied), kubelet's $STAGING left empty; a retried stage is OK"

T1=$(csi_target "$UID1" "$PV") T2=$(csi_target "$UID2" "$PV") T3=$(csi_target "$UID3" "$PV")
csi_publish nfs "$VOL" "$STAGING" "$T1" "${ATTRS[@]}" --pod-uid "$UID1"
csi_publish nfs "$VOL" "$STAGING" "$T2" "${ATTRS[@]}" --pod-uid "$UID2"
csi_publish nfs "$VOL" "$STAGING" "$T3" "${ATTRS[@]}" --pod-uid "$UID3" --readonly
csi_publish nfs "$VOL" "$STAGING" "$T1" "${ATTRS[@]}" --pod-uid "$UID1"   # retried publish: OK
lab_assert_mounted "$T1" nfs4
lab_assert_mounted "$T3" nfs4
[[ $(share_stage_of "$T1") == "$(share_stage_of "$T3")" ]] || lab_die "the pods' targets are not binds of one stage"
echo written-through-csi > "$T1/from-pod1"
lab_assert_file_eq "$LAB_NFS_EXPORT/from-pod1" written-through-csi
lab_assert_file_eq "$T2/from-pod1" written-through-csi
lab_assert_file_eq "$T3/from-pod1" written-through-csi
share_assert_erofs "$T3"
echo pod2 > "$T2/from-pod2"
lab_assert_file_eq "$LAB_NFS_EXPORT/from-pod2" pod2
lab_step "NodePublishVolume: three pods, one stage; pod 1's write is in the export and read by pods 2 and 3; readonly pod 3 gets EROFS"

# The same volume_id with another export: the spec's ALREADY_EXISTS (reason conflict).
lab_nfs_export "$LAB_NFS_ROOT/other"
msg=$(csi_fails ALREADY_EXISTS nfs NodeStageVolume --volume-id "$VOL" --staging "$STAGING" \
  --attr "server=$LAB_NFS_SERVER" --attr "path=$LAB_NFS_ROOT/other" --access-mode MULTI_NODE_MULTI_WRITER)
[[ $msg == conflict:* ]] || lab_die "conflicting stage: message not 'conflict: …': $msg"
lab_step "the same volume_id with another export: ALREADY_EXISTS ($msg)"

# Nothing of the volume left: no mount under kubelet's dir or anywhere, no stage, no record.
assert_clean() {
  share_assert_clean nfs
  local left
  left=$(findmnt -rn -t nfs,nfs4 -o TARGET || true)
  [[ -z $left ]] || lab_die "NFS mounts left: $left"
  "$MOOR" status -o json | jq -e '.volumes | length == 0' >/dev/null || lab_die "moor still records volumes: $("$MOOR" status)"
}

# --- teardown as kubelet does it --------------------------------------------------------
msg=$(csi_fails FAILED_PRECONDITION nfs NodeUnstageVolume --volume-id "$VOL" --staging "$STAGING")
[[ $msg == still_published:* ]] || lab_die "unstage with publishes left: $msg"
for t in "$T1" "$T2" "$T3"; do csi_unpublish nfs "$VOL" "$t"; done
csi_unpublish nfs "$VOL" "$T1"   # not published any more: OK (idempotent)
lab_assert_file_eq "$LAB_NFS_EXPORT/from-pod1" written-through-csi
# CSI stages are never unstaged implicitly: still there after the last unpublish.
lab_assert_eq "$(awk -v p="$LAB_KUBELET_DIR/plugins/moor/nfs/" 'index($5, p) == 1' /proc/self/mountinfo | wc -l)" 1 \
  "stages after the last unpublish (only NodeUnstageVolume ends a CSI stage)"
csi_unstage nfs "$VOL" "$STAGING"
csi_unstage nfs "$VOL" "$STAGING"   # not staged any more: OK
assert_clean
lab_step "unstage refused while published (FAILED_PRECONDITION); unpublish x3 and unstage (each retried: OK) leave no mount, stage or record"

# --- health: staged and published again (the data is still there) -------------------------
csi_stage_publish nfs "$VOL" "$STAGING" "$T1" "$UID1" "${ATTRS[@]}"
csi_publish nfs "$VOL" "$STAGING" "$T3" "${ATTRS[@]}" --pod-uid "$UID3" --readonly
lab_assert_file_eq "$T1/from-pod1" written-through-csi
lab_step "staged and published again after the unstage: the data is still there"
msg=$(csi_fails NOT_FOUND nfs NodeGetVolumeStats --volume-id nfs-pv-none --volume-path "$T1")
[[ $msg == unknown_volume:* ]] || lab_die "stats of an unknown volume_id: $msg"
lab_step "stats of an unknown volume_id: NOT_FOUND ($msg)"

# --- stats: what df says of the export's filesystem on the server -----------------------
st=$(csi_stats nfs "$VOL" "$T1")
total=$(csi_usage "$st" BYTES total) avail=$(csi_usage "$st" BYTES available) used=$(csi_usage "$st" BYTES used)
itotal=$(csi_usage "$st" INODES total)
read -r srv_total srv_itotal <<< "$(stat -f -c '%b %S %c' "$LAB_NFS_EXPORT" | awk '{ print $1 * $2, $3 }')"
# NFS rounds the server's sizes to its transfer block: within 1 %.
within() { awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(b > 0 && d <= b / 100) }'; }
within "$total" "$srv_total" || lab_die "stats total $total bytes, the export's filesystem has $srv_total"
within "$itotal" "$srv_itotal" || lab_die "stats inodes $itotal, the export's filesystem has $srv_itotal"
((avail <= total && used > 0 && used <= total)) || lab_die "stats: available $avail, used $used of $total"
st3=$(csi_stats nfs "$VOL" "$T3")
lab_assert_eq "$(csi_usage "$st3" BYTES total)" "$total" "stats total through the read-only target"
csi_wait_condition 20 nfs "$VOL" "$T1" false >/dev/null
lab_step "NodeGetVolumeStats: $total bytes ($used used, $avail available), $itotal inodes = the export's filesystem; condition normal"

# --- the share dies: nfsd stopped ----------------------------------------------------
lab_run rpc.nfsd 0
t0=$(date +%s)
st=$(csi_wait_condition 90 nfs "$VOL" "$T1" true)
cond=$(jq -r .volume_condition.message <<< "$st")
[[ -n $cond ]] || lab_die "abnormal condition without a message: $st"
lab_step "nfsd stopped: VolumeCondition abnormal after $(( $(date +%s) - t0 )) s: $cond"
lab_run rpc.nfsd 8
[[ -w /proc/fs/nfsd/v4_end_grace ]] && printf Y > /proc/fs/nfsd/v4_end_grace
t0=$(date +%s)
csi_wait_condition 90 nfs "$VOL" "$T1" false >/dev/null
lab_assert_file_eq "$T3/from-pod1" written-through-csi
echo after-restart > "$T1/after-restart"
lab_assert_file_eq "$LAB_NFS_EXPORT/after-restart" after-restart
lab_step "nfsd back: condition normal again after $(( $(date +%s) - t0 )) s, pods read and write"

csi_unpublish nfs "$VOL" "$T1"
csi_unpublish nfs "$VOL" "$T3"
csi_unstage nfs "$VOL" "$STAGING"
assert_clean
share_daemon_stop
lab_step "unpublish + unstage after the outage: nothing left"
