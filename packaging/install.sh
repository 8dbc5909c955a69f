#!/usr/bin/env bash
# packaging/install.sh — installs moor on a node (root):
#   - the binary at $PREFIX/bin/moor (atomic replace: kubelet may exec it at any moment);
#   - the systemd unit (systemd/moor.service) when systemd runs, enabled and started;
#   - one FlexVolume driver directory per driver, moor~<driver>/<driver> -> moor, in
#     kubelet's --volume-plugin-dir; with --socket, a frontend.yaml beside each driver that
#     tells the front end (which kubelet runs with no environment) where the daemon listens,
#     and the unit's daemon started on that socket.
# Usage: packaging/install.sh [--binary PATH] [--prefix /usr/local]
#                             [--plugin-dir /usr/libexec/kubernetes/kubelet-plugins/volume/exec]
#                             [--socket /run/moor/moor.sock] [--no-systemd] [--uninstall]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BINARY=$HERE/target/x86_64-unknown-linux-gnu/release/moor
PREFIX=/usr/local
PLUGIN_DIR=/usr/libexec/kubernetes/kubelet-plugins/volume/exec
SOCKET=/run/moor/moor.sock DEFAULT_SOCKET=/run/moor/moor.sock
SYSTEMD=1 UNINSTALL=0
DRIVERS=(local iscsi rbd fc nfs glusterfs cephfs)

while (($#)); do
  case $1 in
    --binary) BINARY=$2; shift ;;
    --prefix) PREFIX=$2; shift ;;
    --plugin-dir) PLUGIN_DIR=$2; shift ;;
    --socket) SOCKET=$2; shift ;;
    --no-systemd) SYSTEMD=0 ;;
    --uninstall) UNINSTALL=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[[ $(id -u) == 0 ]] || { echo "install.sh: run as root" >&2; exit 1; }
[[ $SOCKET == /* && $SOCKET != *[[:space:]\"]* ]] || { echo "install.sh: --socket must be an absolute path without spaces or quotes" >&2; exit 2; }
[[ -d /run/systemd/system ]] || SYSTEMD=0

if ((UNINSTALL)); then
  for d in "${DRIVERS[@]}"; do
    rm -f "$PLUGIN_DIR/moor~$d/$d" "$PLUGIN_DIR/moor~$d/frontend.yaml"
    rmdir "$PLUGIN_DIR/moor~$d" 2>/dev/null || true
  done
  if ((SYSTEMD)); then systemctl disable --now moor.service || true; rm -f /etc/systemd/system/moor.service; systemctl daemon-reload; fi
  rm -f "$PREFIX/bin/moor"
  echo "moor removed (state in /var/lib/moor kept)"
  exit 0
fi

[[ -x $BINARY ]] || { echo "install.sh: no binary at $BINARY (run packaging/build-release first, or pass --binary)" >&2; exit 1; }
install -d "$PREFIX/bin"
install -m 0755 "$BINARY" "$PREFIX/bin/.moor.new"
mv -f "$PREFIX/bin/.moor.new" "$PREFIX/bin/moor"

# kubelet probes a driver directory as soon as it appears (fsnotify): build each one under a
# dot-name kubelet ignores, then rename it into place, so it never sees a half-made driver.
# The front end reads frontend.yaml only when root owns it and nobody else may write it.
frontend_file() { # <dir>: writes or removes <dir>/frontend.yaml
  if [[ $SOCKET == "$DEFAULT_SOCKET" ]]; then
    rm -f "$1/frontend.yaml"
  else
    printf 'socket: "%s"\n' "$SOCKET" > "$1/.frontend.yaml.new"
    chmod 0644 "$1/.frontend.yaml.new"
    mv -f "$1/.frontend.yaml.new" "$1/frontend.yaml"
  fi
}
install -d "$PLUGIN_DIR"
for d in "${DRIVERS[@]}"; do
  final=$PLUGIN_DIR/moor~$d
  if [[ -L $final/$d || -e $final/$d ]]; then
    frontend_file "$final"
    ln -sfn "$PREFIX/bin/moor" "$final/.$d.new" && mv -Tf "$final/.$d.new" "$final/$d"
  else
    tmp=$PLUGIN_DIR/.moor~$d.new
    rm -rf "$tmp"; install -d "$tmp"
    frontend_file "$tmp"
    ln -s "$PREFIX/bin/moor" "$tmp/$d"
    mv -T "$tmp" "$final"
  fi
  echo "driver moor/$d -> $final/$d"
done

if ((SYSTEMD)); then
  exec_start="$PREFIX/bin/moor daemon"
  [[ $SOCKET == "$DEFAULT_SOCKET" ]] || exec_start+=" --socket $SOCKET"
  sed "s#^ExecStart=/usr/local/bin/moor daemon\$#ExecStart=$exec_start#" "$HERE/systemd/moor.service" > /etc/systemd/system/moor.service
  systemctl daemon-reload
  systemctl enable moor.service
  systemctl restart moor.service
  systemctl is-active moor.service
else
  echo "systemd is not running: start the daemon yourself (moor daemon) or run it as a DaemonSet"
fi
