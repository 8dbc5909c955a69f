#!/bin/bash
# FlexVolume and CSI on one node: a moor~nfs FlexVolume and an nfs.csi.moor.io volume published side by side, neither front end may take the other's volume key, the daemon SIGKILLed in between and restarted, both reconstructed (moor status, mounts, data, retried CSI calls, the volume_id's attributes), both unmounted clean.
# vm: timeout=420
set -euo pipefail
. "$LAB_DIR/lib/moor-csi.sh"
. "$LAB_DIR/servers/nfs-server.sh"

lab_require_moor
lab_nfs_server flex
FLEX_EXPORT=$LAB_NFS_EXPORT
lab_nfs_server csi
CSI_EXPORT=$LAB_NFS_EXPORT
lab_on_exit lab_nfs_server_stop
csi_daemon_start nfs
lab_step "exports $FLEX_EXPORT (for FlexVolume) and $CSI_EXPORT (for CSI); moor daemon with CSI on"

# --- both front ends publish ------------------------------------------------------------
FLEX_UID=0f1e0005-0000-4000-8000-000000000001 CSI_UID=0c510005-0000-4000-8000-000000000002
flex_opts() { jq -cn --arg s "$LAB_NFS_SERVER" --arg p "$1" '{server: $s, path: $p, mountOptions: "nfsvers=4.1"}'; }
F=$(share_mount "$FLEX_UID" nfs flexvol rw "$(flex_opts "$FLEX_EXPORT")")
echo from-flex > "$F/flex-file"
lab_assert_file_eq "$FLEX_EXPORT/flex-file" from-flex

VOL=mixed-pv-csi PV=pv-mixed-csi
ATTRS=(--attr "server=$LAB_NFS_SERVER" --attr "path=$CSI_EXPORT" --mount-flag nfsvers=4.1 --access-mode MULTI_NODE_MULTI_WRITER)
STAGING=$(csi_staging nfs "$VOL") T=$(csi_target "$CSI_UID" "$PV")
csi_stage nfs "$VOL" "$STAGING" "${ATTRS[@]}"
csi_publish nfs "$VOL" "$STAGING" "$T" "${ATTRS[@]}" --pod-uid "$CSI_UID"
echo from-csi > "$T/csi-file"
lab_assert_file_eq "$CSI_EXPORT/csi-file" from-csi
lab_assert_eq "$("$MOOR" status -o json | jq '[.volumes[] | select(.driver == "nfs")] | length')" 2 "nfs volumes in moor status"
lab_step "FlexVolume pod $F and CSI target $T published; two nfs volumes in moor status"

# --- neither front end takes the other's key ------------------------------------------
GRAB=mixed-pv-grab GRAB_STAGING=$(csi_staging nfs mixed-pv-grab)
mkdir -p "$GRAB_STAGING"
msg=$(csi_fails FAILED_PRECONDITION nfs NodeStageVolume --volume-id "$GRAB" --staging "$GRAB_STAGING" \
  --attr "server=$LAB_NFS_SERVER" --attr "path=$FLEX_EXPORT" --mount-flag nfsvers=4.1 --access-mode MULTI_NODE_MULTI_WRITER)
[[ $msg == key_in_use:* ]] || lab_die "CSI stage of the FlexVolume's key: $msg"
d=$(lab_pod_volume_dir 0f1e0005-0000-4000-8000-000000000003 nfs grab)
mkdir -p "$d"
reply=$(lab_with_deadline 120 "$MOOR" flex mount "$d" \
  "$(share_opts 0f1e0005-0000-4000-8000-000000000003 grab rw "$(flex_opts "$CSI_EXPORT")")" || true)
[[ $(jq -r .status <<< "$reply") == Failure && $(jq -r .message <<< "$reply") == key_in_use:* ]] \
  || lab_die "FlexVolume mount of the CSI volume's key: $reply"
lab_assert_not_mounted "$d"
rmdir "$d"
lab_step "a CSI stage of the FlexVolume's export and a FlexVolume mount of the CSI export: both refused key_in_use"

# --- SIGKILL, restart, both reconstructed -------------------------------------------------
csi_daemon_kill
lab_assert_mounted "$F" nfs4
lab_assert_mounted "$T" nfs4
csi_daemon_start nfs
status=$("$MOOR" status -o json)
printf '%s\n' "$status" > "$LAB_OUT/status-after-restart.json"
for p in "$F" "$T"; do
  jq -e --arg t "$p" '[.volumes[].pods[].target] | index($t) != null' <<< "$status" >/dev/null \
    || lab_die "moor status after the restart does not list $p: $("$MOOR" status)"
done
lab_assert_file_eq "$F/flex-file" from-flex
lab_assert_file_eq "$T/csi-file" from-csi
# kubelet retries after a plugin restart: the same calls answer OK and change nothing; the
# CSI record kept its volume_id and attributes (another export under it is still a conflict).
csi_stage nfs "$VOL" "$STAGING" "${ATTRS[@]}"
csi_publish nfs "$VOL" "$STAGING" "$T" "${ATTRS[@]}" --pod-uid "$CSI_UID"
msg=$(csi_fails ALREADY_EXISTS nfs NodeStageVolume --volume-id "$VOL" --staging "$STAGING" \
  --attr "server=$LAB_NFS_SERVER" --attr "path=$FLEX_EXPORT" --mount-flag nfsvers=4.1 --access-mode MULTI_NODE_MULTI_WRITER)
[[ $msg == conflict:* ]] || lab_die "the CSI volume_id with another export after the restart: $msg"
F2=$(share_mount 0f1e0005-0000-4000-8000-000000000004 nfs flexvol rw "$(flex_opts "$FLEX_EXPORT")")
lab_assert_file_eq "$F2/flex-file" from-flex
[[ $(share_stage_of "$F2") == "$(share_stage_of "$F")" ]] || lab_die "the reconstructed FlexVolume stage was not reused"
lab_step "kill -9 and restart: both volumes in moor status, mounted, data intact; retried stage/publish OK, another export under the CSI volume_id still a conflict; a new FlexVolume pod reuses the reconstructed stage"

# --- both unmounted clean -----------------------------------------------------------------
lab_moor_flex unmount "$F2" >/dev/null
lab_moor_flex unmount "$F" >/dev/null
csi_unpublish nfs "$VOL" "$T"
csi_unstage nfs "$VOL" "$STAGING"
share_assert_clean nfs
left=$(findmnt -rn -t nfs,nfs4 -o TARGET || true)
[[ -z $left ]] || lab_die "NFS mounts left: $left"
"$MOOR" status -o json | jq -e '.volumes | length == 0' >/dev/null || lab_die "moor still records volumes: $("$MOOR" status)"
lab_assert_file_eq "$FLEX_EXPORT/flex-file" from-flex
lab_assert_file_eq "$CSI_EXPORT/csi-file" from-csi
share_daemon_stop
lab_step "FlexVolume unmounts and CSI unpublish/unstage: no mount, stage or record left; both exports keep their data"
