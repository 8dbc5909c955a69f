#!/bin/bash
# moor~iscsi with CHAP: a wrong secret is a clear Failure with no session; the right one (and mutual CHAP) mounts; secrets never in argv, journal or logs.
# vm: timeout=420
set -euo pipefail
. "$LAB_DIR/lib/lab.sh"
. "$LAB_DIR/lib/moor-node.sh"
. "$LAB_DIR/servers/iscsi-target.sh"

lab_require_moor
lab_on_exit lab_iscsi_target_stop
lab_on_exit 'iscsiadm -m node --logoutall=all >/dev/null 2>&1 || true'
lab_iscsi_initiator
# A wrapper iscsiadm first in the daemon's PATH records every argv moor passes.
WRAP=/tmp/wrap ARGV_LOG=/tmp/iscsiadm-argv.log
mkdir -p "$WRAP"; : > "$ARGV_LOG"
real=$(command -v iscsiadm)
printf '#!/bin/sh\necho "$*" >> %s\nexec %s "$@"\n' "$ARGV_LOG" "$real" > "$WRAP/iscsiadm"
chmod +x "$WRAP/iscsiadm"
LOG=/tmp/moor-daemon.log
PATH="$WRAP:$PATH" "$MOOR" daemon --metrics-addr off >"$LOG" 2>&1 &
DAEMON=$!
lab_on_exit "kill $DAEMON 2>/dev/null || true"
lab_wait_for 20 "moor socket" test -S /run/moor/moor.sock
sessions() { { iscsiadm -m session 2>/dev/null || true; } | wc -l; }
b64() { printf '%s' "$1" | base64 -w0; }
opts() { # UID PASSWORD [MUTUAL_USER MUTUAL_PASSWORD]
  jq -cn --arg p "$LAB_ISCSI_PORTAL" --arg iqn "$LAB_ISCSI_IQN" --arg uid "$1" \
    --arg u "$(b64 "$LAB_ISCSI_CHAP_USER")" --arg pw "$(b64 "$2")" \
    --arg mu "$(b64 "${3:-}")" --arg mp "$(b64 "${4:-}")" '{
    targetPortal: $p, iqn: $iqn, lun: "0", chapAuthSession: "true", "kubernetes.io/fsType": "ext4",
    "kubernetes.io/readwrite": "rw", "kubernetes.io/pod.uid": $uid, "kubernetes.io/pvOrVolumeName": "chap1",
    "kubernetes.io/secret/node.session.auth.username": $u,
    "kubernetes.io/secret/node.session.auth.password": $pw }
    + (if $mu != "" then {"kubernetes.io/secret/node.session.auth.username_in": $mu,
        "kubernetes.io/secret/node.session.auth.password_in": $mp} else {} end)'
}
UID1=33333333-0000-4000-8000-000000000001 UID2=33333333-0000-4000-8000-000000000002
POD1=$(lab_pod_volume_dir $UID1 iscsi chap1) POD2=$(lab_pod_volume_dir $UID2 iscsi chap1)
mkdir -p "$POD1" "$POD2"

lab_iscsi_target chap
reply=$("$MOOR" flex mount "$POD1" "$(opts $UID1 wrong-secret-0000)" || true)
lab_log "reply: $reply"
lab_assert_eq "$(jq -r .status <<< "$reply")" Failure "mount with a wrong CHAP secret"
grep -q "CHAP authentication at login" <<< "$reply" || lab_die "the failure does not say the login's CHAP failed: $reply"
lab_assert_eq "$(sessions)" 0 "sessions after the refused login"
lab_step "wrong CHAP secret: clear Failure, no session"

lab_moor_flex mount "$POD1" "$(opts $UID1 "$LAB_ISCSI_CHAP_SECRET")" >/dev/null
echo chap-data > "$POD1/data"
rec=$(ls /etc/iscsi/nodes/"$LAB_ISCSI_IQN"/*/default)
lab_assert_eq "$(stat -c %a "$rec")" 600 "mode of the node record holding the secret"
lab_moor_flex unmount "$POD1" >/dev/null
lab_moor_flex mount "$POD2" "$(opts $UID2 "$LAB_ISCSI_CHAP_SECRET")" >/dev/null
lab_assert_eq "$(cat "$POD2/data")" chap-data "data through a second pod dir"
lab_moor_flex unmount "$POD2" >/dev/null
lab_assert_eq "$(sessions)" 0 "sessions after the last unmount"
lab_step "right CHAP secret: mount, data survives remount, no session left"

lab_iscsi_target_stop
lab_iscsi_target mutual
lab_moor_flex mount "$POD1" "$(opts $UID1 "$LAB_ISCSI_CHAP_SECRET" "$LAB_ISCSI_CHAP_MUTUAL_USER" "$LAB_ISCSI_CHAP_MUTUAL_SECRET")" >/dev/null
lab_assert_mounted "$POD1"
lab_moor_flex unmount "$POD1" >/dev/null
lab_assert_eq "$(sessions)" 0 "sessions after the mutual-CHAP unmount"
lab_step "mutual CHAP mounts and unmounts"

for s in "$LAB_ISCSI_CHAP_SECRET" "$LAB_ISCSI_CHAP_MUTUAL_SECRET"; do
  ! grep -qF -- "$s" "$ARGV_LOG" || lab_die "a CHAP secret reached iscsiadm's argv"
  ! grep -rqF -- "$s" /var/lib/moor || lab_die "a CHAP secret is in the journal"
  ! grep -qF -- "$s" "$LOG" || lab_die "a CHAP secret is in moor's log"
done
lab_log "iscsiadm argv seen: $(wc -l < "$ARGV_LOG") calls"
lab_step "secrets never in iscsiadm argv, the journal or moor's log"

# Discovery CHAP (chapAuthDiscovery): LIO answers SendTargets only to an authenticated
# initiator. A wrong discovery secret fails before any login; the right one mounts. The
# secrets go into open-iscsi's discovery record (0600), never argv, journal or log.
DISC=$_LAB_CFS/iscsi/discovery_auth
DISC_USER=lab-discovery DISC_SECRET=disc-secret-8910
lab_on_exit "printf 0 > $DISC/enforce_discovery_auth 2>/dev/null || true"
printf '%s' "$DISC_USER" > "$DISC/userid"
printf '%s' "$DISC_SECRET" > "$DISC/password"
printf 1 > "$DISC/enforce_discovery_auth"
disc_opts() { # UID DISCOVERY_PASSWORD
  opts "$1" "$LAB_ISCSI_CHAP_SECRET" "$LAB_ISCSI_CHAP_MUTUAL_USER" "$LAB_ISCSI_CHAP_MUTUAL_SECRET" |
    jq -c --arg u "$(b64 "$DISC_USER")" --arg pw "$(b64 "$2")" '. + {chapAuthDiscovery: "true",
      "kubernetes.io/secret/discovery.sendtargets.auth.username": $u,
      "kubernetes.io/secret/discovery.sendtargets.auth.password": $pw}'
}
reply=$("$MOOR" flex mount "$POD1" "$(disc_opts $UID1 wrong-discovery-0000)" || true)
lab_log "reply: $reply"
lab_assert_eq "$(jq -r .status <<< "$reply")" Failure "mount with a wrong discovery CHAP secret"
grep -q "CHAP authentication at discovery.*discovery.sendtargets.auth" <<< "$reply" ||
  lab_die "the failure does not say discovery CHAP failed: $reply"
lab_assert_eq "$(sessions)" 0 "sessions after the refused discovery"
lab_assert_not_mounted "$POD1"
lab_moor_flex mount "$POD1" "$(disc_opts $UID1 "$DISC_SECRET")" >/dev/null
lab_assert_mounted "$POD1"
st=$(ls /etc/iscsi/send_targets/*/st_config)
lab_assert_eq "$(stat -c %a "$st")" 600 "mode of the discovery record holding the secret"
lab_moor_flex unmount "$POD1" >/dev/null
lab_assert_eq "$(sessions)" 0 "sessions after the discovery-CHAP unmount"
! grep -qF -- "$DISC_SECRET" "$ARGV_LOG" || lab_die "the discovery secret reached iscsiadm's argv"
! grep -rqF -- "$DISC_SECRET" /var/lib/moor || lab_die "the discovery secret is in the journal"
! grep -qF -- "$DISC_SECRET" "$LOG" || lab_die "the discovery secret is in moor's log"
lab_step "discovery CHAP: wrong secret refused before login, right one mounts; secret only in the 0600 record"
