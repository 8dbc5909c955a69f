# shellcheck shell=sh
# Shared by moor's maintainer scripts (packaging/deb/build pastes it into each one, so
# every script stands alone as dpkg requires). POSIX sh.
#
# DPKG_ROOT is set by `dpkg --root` (with --force-script-chrootless): the package is being
# installed into another tree, so every path is under it and this machine's systemd is
# none of its business.
ROOT=${DPKG_ROOT:-}
MOOR_PLUGIN_DIR=/usr/libexec/kubernetes/kubelet-plugins/volume/exec
if [ -r "$ROOT/etc/default/moor" ]; then
  # shellcheck disable=SC1091
  . "$ROOT/etc/default/moor"
fi
# shellcheck disable=SC2034 # used by the scripts this is pasted into
PLUGIN_DIR=$ROOT$MOOR_PLUGIN_DIR

# systemd is PID 1 here (not a container, a chroot or another root).
have_systemd() {
  [ -z "$ROOT" ] && [ -d /run/systemd/system ]
}

no_systemd() {
  if [ -n "$ROOT" ]; then
    echo "moor: installing into $ROOT: skipping moor.service ($1)" >&2
  else
    echo "moor: systemd is not PID 1 here (a container?): skipping moor.service ($1); run 'moor daemon' under your own supervisor" >&2
  fi
}
