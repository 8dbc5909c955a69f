#!/bin/bash
# moor~cephfs: kernel and ceph-fuse mounts of a restricted subdir with the key from a Secret (0600 file in a private dir, never in argv, journal or logs, gone after unstage), rw and ro pods sharing one stage, healed after the client is evicted, a blackholed monitor fails within the deadline without blocking another mount, nothing left after the last unmount.
# vm: mem=3072 cpus=2 timeout=600
set -euo pipefail
. "$LAB_DIR/lib/lab.sh"
. "$LAB_DIR/lib/moor-node.sh"
. "$LAB_DIR/lib/moor-share.sh"
. "$LAB_DIR/servers/ceph.sh"

lab_require_moor
lab_modprobe ceph fuse
lab_ceph_start --fast
lab_on_exit lab_ceph_stop
share_daemon_start --mount-timeout-seconds 10
KEY=$(tr -d '\n' < "$CEPH_FS_SECRET_FILE")
KEY_B64=$(printf '%s' "$KEY" | base64 -w0)
lab_step "ceph cluster ready (mon $CEPH_MON, fs $CEPH_FS_NAME, $CEPH_FS_SUBDIR for client.$CEPH_FS_USER); moor daemon running"

# argv of every process, sampled in the background while moor mounts: the key must
# never show up there.
# The pattern comes from a file: on grep's own command line it would find itself.
KEY_PATTERN=$(mktemp); printf '%s\n' "$KEY" > "$KEY_PATTERN"
( while :; do cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\0' ' ' | grep -F -f "$KEY_PATTERN" >> "$LAB_OUT/key-in-argv" || true; sleep 0.05; done ) &
ARGV_WATCH=$!
lab_on_exit "kill $ARGV_WATCH"

n=0
for mounter in kernel fuse; do
  n=$((n + 1))
  opts=$(jq -cn --arg m "$CEPH_MON" --arg p "$CEPH_FS_SUBDIR" --arg u "$CEPH_FS_USER" --arg k "$KEY_B64" \
    --arg mt "$mounter" --arg fs "$CEPH_FS_NAME" \
    '{monitors: $m, path: $p, user: $u, mounter: $mt, fsName: $fs, "kubernetes.io/secret/key": $k}')
  a=$(share_mount "aaaaaaa$n-0000-4000-8000-000000000001" cephfs "vol$n" rw "$opts")
  b=$(share_mount "bbbbbbb$n-0000-4000-8000-000000000002" cephfs "vol$n" rw "$opts")
  c=$(share_mount "ccccccc$n-0000-4000-8000-000000000003" cephfs "vol$n" ro "$opts")
  want_type=$([[ $mounter == kernel ]] && echo ceph || echo fuse.ceph-fuse)
  lab_assert_mounted "$a" "$want_type"
  stage=$(share_stage_of "$a")
  key=$(basename "$stage")
  [[ -n $stage && $(share_stage_of "$b") == "$stage" && $(share_stage_of "$c") == "$stage" ]] \
    || lab_die "pods do not share one stage"
  sdir=/run/moor/secrets/$key
  lab_assert_eq "$(stat -c %a "$sdir")" 700 "mode of $sdir"
  for f in "$sdir"/*; do lab_assert_eq "$(stat -c %a "$f")" 600 "mode of $f"; done
  ls -l "$sdir" >&2
  echo "ceph-a-$mounter" > "$a/from-a-$mounter"
  lab_assert_file_eq "$b/from-a-$mounter" "ceph-a-$mounter"
  lab_assert_file_eq "$c/from-a-$mounter" "ceph-a-$mounter"
  share_assert_erofs "$c"
  echo "ceph-b" > "$b/from-b-$mounter"
  lab_step "CephFS $mounter: one stage for three pods, credentials in $sdir (0700/0600); a writes, b and c read; ro c gets EROFS while rw b writes"

  for d in "$a" "$b" "$c"; do
    lab_moor_flex unmount "$d" >/dev/null 2>&1
    lab_assert_not_mounted "$d"
  done
  share_assert_clean cephfs
  [[ ! -e $sdir ]] || lab_die "secret dir $sdir left after unstage: $(ls -la "$sdir")"
  lab_wait_for 15 "no ceph-fuse left" bash -c "! pgrep -x ceph-fuse"
  lab_step "CephFS $mounter: after the last unmount nothing is mounted and no secret file is left"
done

# --- deadline: a blackholed monitor ---------------------------------------------------
dead=$(jq -cn --arg k "$KEY_B64" '{monitors: "10.99.99.97:6789", path: "/", user: "fs", "kubernetes.io/secret/key": $k}')
ok=$(jq -cn --arg m "$CEPH_MON" --arg p "$CEPH_FS_SUBDIR" --arg u "$CEPH_FS_USER" --arg k "$KEY_B64" \
  '{monitors: $m, path: $p, user: $u, "kubernetes.io/secret/key": $k}')
echo ok > "$(share_mount 99999999-0000-4000-8000-000000000009 cephfs seedvol rw "$ok")/deadline-seed"
lab_moor_flex unmount "$(lab_pod_volume_dir 99999999-0000-4000-8000-000000000009 cephfs seedvol)" >/dev/null 2>&1
share_deadline_check cephfs "$dead" 10.99.99.97 cephfs "$ok" deadline-seed ok 25
share_assert_clean cephfs
left=$(find /run/moor/secrets -mindepth 1 2>/dev/null || true)
[[ -z $left ]] || lab_die "secret files left: $left"
lab_step "blackholed monitor: failure names it within the deadline, no mount, stage, record or secret left; another mount meanwhile not blocked"

# --- the key is nowhere but where it belongs ---------------------------------------------
kill "$ARGV_WATCH" 2>/dev/null || true
[[ ! -s $LAB_OUT/key-in-argv ]] || lab_die "the key appeared in a process's argv: $(head -c 300 "$LAB_OUT/key-in-argv")"
share_daemon_stop
for f in "$LAB_OUT/moor-daemon.log" $(find /var/lib/moor /run/moor "$LAB_KUBELET_DIR/plugins" -type f 2>/dev/null); do
  grep -qF -- "$KEY" "$f" && lab_die "the key is in $f"
done
if command -v journalctl >/dev/null && journalctl -q 2>/dev/null | grep -F -- "$KEY" >/dev/null; then lab_die "the key is in the journal"; fi
lab_step "the key never appeared in argv, moor's log, journal records, run dir or the system journal"

# --- healing: an evicted (blocklisted) client -------------------------------------------
# Last, so a failure here does not hide the checks above. An evicted ceph-fuse answers
# ESHUTDOWN: the probe's forced attribute sync and directory read reach the MDS and see it.
share_daemon_start --mount-timeout-seconds 10
n=10
# Eviction is exercised on ceph-fuse, the client moor itself heals. The kernel client gets
# recover_session=clean and reconnects by itself; under TCG its recovery (and the evict
# helper's view of it) is too racy to gate CI on, so it is not asserted here.
# shellcheck disable=SC2043 # one client today; the loop keeps the kernel case one word away
for mounter in fuse; do
  n=$((n + 1))
  opts=$(jq -cn --arg m "$CEPH_MON" --arg p "$CEPH_FS_SUBDIR" --arg u "$CEPH_FS_USER" --arg k "$KEY_B64" \
    --arg mt "$mounter" '{monitors: $m, path: $p, user: $u, mounter: $mt, "kubernetes.io/secret/key": $k}')
  a=$(share_mount "aaaaaa$n-0000-4000-8000-000000000001" cephfs "hvol$n" rw "$opts")
  b=$(share_mount "bbbbbb$n-0000-4000-8000-000000000002" cephfs "hvol$n" rw "$opts")
  c=$(share_mount "cccccc$n-0000-4000-8000-000000000003" cephfs "hvol$n" ro "$opts")
  echo "ceph-a-$mounter" > "$a/from-a-$mounter"
  # Flushed, as an application that cares would: an evicted client's dirty data is dropped
  # by design ("dropping dirty+flushing Fw state"), which no healing can bring back.
  sync "$a/from-a-$mounter"
  # --- healing: the client is evicted (and blocklisted) ------------------------------
  heals0=$(share_metric 'moor_heals_total{')
  # The helper's "no session left" check can see moor's healed client already (the probe
  # runs every 2 s): the heal counter below proves the eviction and the heal.
  lab_ceph fs-evict "$CEPH_FS_USER" || lab_log "fs-evict: a session of client.$CEPH_FS_USER is back already"
  # HEALING (needs the reconciler from main's "Healing:" commit)
  share_wait_healed 30 "$a/from-a-$mounter" "ceph-a-$mounter"
  lab_wait_for 10 "write through b after eviction" lab_with_deadline 5 sh -c "echo after-evict > '$b/after-evict-$mounter'"
  lab_assert_file_eq "$c/after-evict-$mounter" after-evict
  share_assert_erofs "$c"
  heals1=$(share_metric 'moor_heals_total{')
  awk -v a="$heals0" -v b="$heals1" 'BEGIN { exit !(b > a) }' || lab_die "moor_heals_total did not grow ($heals0 -> $heals1)"
  lab_step "CephFS $mounter: evicted client healed (moor heals: $heals0 -> $heals1); pods read and write again, ro kept"

  for d in "$a" "$b" "$c"; do lab_moor_flex unmount "$d" >/dev/null 2>&1; done
  share_assert_clean cephfs
done
