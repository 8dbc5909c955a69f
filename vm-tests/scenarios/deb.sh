#!/bin/bash
# The Debian package under systemd: dpkg -i enables and starts moor.service and installs the FlexVolume drivers; a volume mounted through them survives an upgrade (daemon restarted, same mount id, status lists it), dpkg -r (daemon stopped) and dpkg -P (/etc/moor gone, /var/lib/moor kept); a reinstall serves it again.
# vm: systemd=1 mem=1536 cpus=2 timeout=300
set -euo pipefail
. "$LAB_DIR/lib/lab.sh"
MOOR=/usr/bin/moor
. "$LAB_DIR/lib/moor-node.sh"

DEBS=$LAB_DIR/../debs
A=$DEBS/moor_0.1.0~lab1_amd64.deb
B=$DEBS/moor_0.1.0~lab2_amd64.deb
[[ -f $A && -f $B ]] || lab_die "no packages in $DEBS (vm-tests/run builds them with packaging/deb/build): $(cat "$DEBS/build.log" 2>/dev/null)"
lab_assert_eq "$(cat /proc/1/comm)" systemd "PID 1"
PLUGIN=/usr/libexec/kubernetes/kubelet-plugins/volume/exec
DRIVERS="local iscsi rbd fc nfs glusterfs cephfs"

pkg_version() { dpkg-query -W -f '${db:Status-Abbrev} ${Version}' moor 2>/dev/null || true; }
main_pid() { systemctl show -P MainPID moor.service; }
# The mount id of a mount point (mountinfo field 1): a new mount would have a new one.
mount_id() { awk -v d="$1" '$5 == d { id = $1 } END { print id }' /proc/self/mountinfo; }
# A FlexVolume call the way kubelet makes it: the driver link, its JSON reply on stdout.
flex() { lab_with_deadline 60 "$PLUGIN/moor~local/local" "$@"; }
flex_ok() {
  local reply
  reply=$(flex "$@") || lab_die "moor~local/local $1 exited non-zero: $reply"
  [[ $(jq -r .status <<< "$reply") == Success ]] || lab_die "moor~local/local $1: $reply"
}
status_lists() { # <dir>: moor status -o json names it
  local s
  s=$(lab_with_deadline 30 "$MOOR" status -o json) || lab_die "moor status -o json failed: $s"
  jq -e --arg d "$1" '[.. | objects | select(any(.[]?; . == $d))] | length > 0' <<< "$s" >/dev/null
}

# Under the package config's allowed root, there before the daemon starts.
SRC=/mnt/disks/vol1 POD_UID=6f1c2a9e-deb0-4000-8000-000000000001
mkdir -p "$SRC" && echo seed > "$SRC/seed"

# --- install A ---------------------------------------------------------------------
lab_assert_cmd_fails systemctl cat moor.service
lab_run lab_with_deadline 120 dpkg -i "$A"
lab_assert_eq "$(pkg_version)" "ii  0.1.0~lab1" "package state"
lab_assert_eq "$(systemctl is-enabled moor.service)" enabled "moor.service enabled"
lab_assert_eq "$(systemctl is-active moor.service)" active "moor.service active"
pid_a=$(main_pid)
lab_assert_eq "$(readlink "/proc/$pid_a/exe")" /usr/bin/moor "the daemon's binary"
for d in $DRIVERS; do
  [[ -L $PLUGIN/moor~$d/$d && -x $PLUGIN/moor~$d/$d ]] || lab_die "no driver link $PLUGIN/moor~$d/$d"
done
cmp -s "$PLUGIN/.moor/moor" /usr/bin/moor || lab_die "the front end in $PLUGIN/.moor is not the package's binary"
lab_step "dpkg -i A: moor.service enabled and active (pid $pid_a), 7 driver links in $PLUGIN"

# --- a local directory volume through the front end ---------------------------------
POD_DIR=$(lab_pod_volume_dir "$POD_UID" local vol1)
mkdir -p "$POD_DIR"
OPTIONS=$(jq -cn --arg p "$SRC" --arg uid "$POD_UID" '{ path: $p, "kubernetes.io/fsType": "",
  "kubernetes.io/readwrite": "rw", "kubernetes.io/pod.uid": $uid, "kubernetes.io/pvOrVolumeName": "vol1" }')
flex_ok mount "$POD_DIR" "$OPTIONS"
lab_assert_mounted "$POD_DIR"
lab_assert_file_eq "$POD_DIR/seed" seed
id_a=$(mount_id "$POD_DIR")
[[ -n $id_a ]] || lab_die "no mount id for $POD_DIR"
status_lists "$POD_DIR" || lab_die "moor status does not list $POD_DIR"
echo "# edited by the operator" >> /etc/moor/config.yaml
lab_step "volume published at $POD_DIR through moor~local/local (mount id $id_a); config edited"

# --- upgrade to B, first with a config the new moor refuses ---------------------------
cp /etc/moor/config.yaml /tmp/config.good
echo "metrics-adr: 127.0.0.1:1" >> /etc/moor/config.yaml
if lab_with_deadline 120 dpkg -i "$B" >/tmp/dpkg-bad.log 2>&1; then
  lab_die "the upgrade went through with a config moor refuses: $(cat /tmp/dpkg-bad.log)"
fi
grep -q 'metrics-adr' /tmp/dpkg-bad.log || lab_die "dpkg's output does not name the bad key: $(cat /tmp/dpkg-bad.log)"
lab_assert_eq "$(main_pid)" "$pid_a" "the daemon left running while the config is refused"
lab_assert_eq "$(mount_id "$POD_DIR")" "$id_a" "mount id while the upgrade waits"
cp /tmp/config.good /etc/moor/config.yaml
lab_run lab_with_deadline 120 dpkg --configure -a
lab_step "a refused config stopped the upgrade before the restart (daemon $pid_a kept serving); fixed, dpkg --configure -a finished it"
lab_assert_eq "$(pkg_version)" "ii  0.1.0~lab2" "package state after upgrade"
lab_assert_eq "$(systemctl is-active moor.service)" active "moor.service after upgrade"
pid_b=$(main_pid)
[[ $pid_b != "$pid_a" ]] || lab_die "the upgrade did not restart the daemon (pid $pid_a)"
lab_assert_eq "$(mount_id "$POD_DIR")" "$id_a" "mount id of $POD_DIR after upgrade"
lab_assert_file_eq "$POD_DIR/seed" seed
echo after-upgrade > "$POD_DIR/after" && lab_assert_file_eq "$SRC/after" after-upgrade
status_lists "$POD_DIR" || lab_die "moor status does not list $POD_DIR after the upgrade"
grep -qx '# edited by the operator' /etc/moor/config.yaml || lab_die "the upgrade replaced the edited conffile"
lab_step "dpkg -i B: daemon restarted ($pid_a -> $pid_b), mount $id_a untouched, status lists it, config edit kept"

# --- remove -----------------------------------------------------------------------------
lab_run lab_with_deadline 120 dpkg -r moor
lab_assert_eq "$(pkg_version)" "rc  0.1.0~lab2" "package state after remove"
[[ $(systemctl is-active moor.service) != active ]] || lab_die "moor.service still active after dpkg -r"
lab_pid_gone "$pid_b" || lab_die "the daemon $pid_b still runs after dpkg -r"
[[ ! -e /usr/bin/moor ]] || lab_die "/usr/bin/moor left after dpkg -r"
lab_assert_eq "$(mount_id "$POD_DIR")" "$id_a" "mount id of $POD_DIR after remove"
[[ -d /var/lib/moor && -n $(ls -A /var/lib/moor) ]] || lab_die "/var/lib/moor is gone or empty after dpkg -r"
[[ -f /etc/moor/config.yaml ]] || lab_die "dpkg -r removed the config (only purge may)"
# kubelet's unmount through the kept driver fails, saying why, and unmounts nothing.
reply=$(flex unmount "$POD_DIR" || true)
[[ $(jq -r .status <<< "$reply" 2>/dev/null) == Failure && $(jq -r .message <<< "$reply") == daemon_unreachable:* ]] ||
  lab_die "unmount without the daemon: $reply"
lab_assert_eq "$(mount_id "$POD_DIR")" "$id_a" "mount id after an unmount with no daemon"
lab_log "unmount with moor removed: $reply"
lab_step "dpkg -r: daemon stopped, mount $id_a and /var/lib/moor kept, the kept driver fails cleanly"

# --- purge ------------------------------------------------------------------------------
lab_run lab_with_deadline 120 dpkg -P moor
lab_assert_eq "$(pkg_version)" "" "package state after purge"
[[ ! -e /etc/moor && ! -e /etc/default/moor ]] || lab_die "config left after dpkg -P: $(ls -la /etc/moor /etc/default/moor 2>&1)"
lab_assert_eq "$(mount_id "$POD_DIR")" "$id_a" "mount id of $POD_DIR after purge"
[[ -d /var/lib/moor && -n $(ls -A /var/lib/moor) ]] || lab_die "/var/lib/moor is gone or empty after dpkg -P"
lab_assert_file_eq "$POD_DIR/seed" seed
lab_step "dpkg -P: /etc/moor and /etc/default/moor gone; mount $id_a and /var/lib/moor kept"

# --- reinstall: the kept state is moor's again -----------------------------------------
lab_run lab_with_deadline 120 dpkg -i "$A"
lab_assert_eq "$(systemctl is-active moor.service)" active "moor.service after reinstall"
status_lists "$POD_DIR" || lab_die "the reinstalled moor does not know $POD_DIR"
flex_ok unmount "$POD_DIR"
lab_assert_not_mounted "$POD_DIR"
left=$(awk -v d="$LAB_KUBELET_DIR/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo)
[[ -z $left ]] || lab_die "mounts left under $LAB_KUBELET_DIR: $left"
lab_assert_file_eq "$SRC/after" after-upgrade
lab_step "reinstall after purge: moor reconstructed the volume from /var/lib/moor and unmounted it"
