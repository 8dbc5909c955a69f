# shellcheck shell=bash
# moor-node.sh — make this machine a moor node the way an operator would: the
# binary in /usr/local/bin, the systemd unit from the repo's systemd/, and the
# FlexVolume driver symlinks kubelet execs. Used by scenarios and the Vagrant
# node box alike.
#
#   . "$LAB_DIR/lib/moor-node.sh"
#   lab_install_moor [BIN]     install BIN (default: the moor already in /usr/local/bin,
#                              which vm-tests/run puts there) + unit + FlexVolume links
#   lab_require_moor           die unless a moor binary is installed
#   lab_moor_flex OP ARGS…     run `moor flex OP ARGS…`, print its JSON reply, fail
#                              unless the reply's status is Success
#   lab_pod_volume_dir UID DRIVER NAME   kubelet's directory for a pod's volume
#
# Settings: LAB_KUBELET_DIR (default /var/lib/kubelet), LAB_FLEX_DIR (kubelet's
# FlexVolume plugin dir, default /usr/libexec/kubernetes/kubelet-plugins/volume/exec),
# LAB_MOOR_DRIVERS (FlexVolume drivers to link, default "local").

# shellcheck source=lab.sh
. "$(dirname "${BASH_SOURCE[0]}")/lab.sh"

LAB_KUBELET_DIR=${LAB_KUBELET_DIR:-/var/lib/kubelet}
LAB_FLEX_DIR=${LAB_FLEX_DIR:-/usr/libexec/kubernetes/kubelet-plugins/volume/exec}
LAB_MOOR_DRIVERS=${LAB_MOOR_DRIVERS:-local}
MOOR=${MOOR:-/usr/local/bin/moor}

lab_require_moor() {
  [[ -x $MOOR ]] || lab_die "no moor binary at $MOOR (vm-tests/run: set MOOR_BIN or make 'cargo build' work)"
}

lab_install_moor() {
  local bin=${1:-$MOOR} unit driver repo_systemd
  lab_require_root
  [[ -x $bin ]] || lab_die "moor binary $bin not found"
  [[ $bin -ef $MOOR ]] || install -D -m 0755 "$bin" "$MOOR"
  # The unit comes from the repo (the lab share in a guest, the checkout on Vagrant).
  repo_systemd=$(cd "$LAB_DIR/../systemd" 2>/dev/null && pwd) || lab_die "no systemd/ next to $LAB_DIR"
  for unit in "$repo_systemd"/*.service; do
    [[ -e $unit ]] || lab_die "no unit files in $repo_systemd"
    install -m 0644 "$unit" /etc/systemd/system/
  done
  for driver in $LAB_MOOR_DRIVERS; do
    mkdir -p "$LAB_FLEX_DIR/moor~$driver"
    ln -sfn "$MOOR" "$LAB_FLEX_DIR/moor~$driver/$driver"
  done
  if [[ -d /run/systemd/system ]]; then systemctl daemon-reload; fi
  lab_log "moor installed: $($MOOR version 2>/dev/null | head -n 1), drivers: $LAB_MOOR_DRIVERS"
}

lab_pod_volume_dir() { echo "$LAB_KUBELET_DIR/pods/$1/volumes/moor~$2/$3"; }

lab_moor_flex() {
  local reply status
  reply=$(lab_with_deadline 120 "$MOOR" flex "$@") || lab_die "moor flex $1 exited non-zero; reply: $reply"
  printf '%s\n' "$reply" >&2
  status=$(jq -r .status <<< "$reply" 2>/dev/null) || lab_die "moor flex $1 did not print one JSON object: $reply"
  [[ $status == Success ]] || lab_die "moor flex $1: status '$status': $reply"
  printf '%s\n' "$reply"
}
