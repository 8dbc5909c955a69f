#!/bin/bash
# iscsi-target.sh — a real LIO iSCSI target, configured straight through configfs
# (no targetcli, no D-Bus, no python), shared by every scenario and the Vagrant
# storage box.
#
# As a library (scenarios):
#   . "$LAB_DIR/servers/iscsi-target.sh"
#   lab_iscsi_target plain [NAME]      one 512 MiB LUN, no authentication (demo mode, any initiator)
#   lab_iscsi_target chap [NAME]       CHAP: an ACL for this initiator with user/secret
#   lab_iscsi_target mutual [NAME]     CHAP both ways (the target authenticates too)
#   lab_iscsi_target multipath [NAME]  one LUN behind two portals (ports 3260 and 3261)
#   lab_iscsi_initiator                start iscsid (the open-iscsi initiator daemon) if needed
#   lab_iscsi_target_stop              remove every target and backstore this helper made
#   lab_iscsi_grow NAME SIZE_MB        grow NAME's LUN (made with LAB_ISCSI_BACKING=loop), as an
#                                      array grows a LUN: the initiator sees it after a rescan
#   lab_multipathd_start               dm-multipath on the initiator side (every path of a WWID
#                                      becomes one map, WWID-named); lab_multipathd_stop flushes
#                                      the maps and stops it
# Each lab_iscsi_target call returns only when the portal(s) accept connections and
# the target answers a SendTargets discovery with its IQN; otherwise it dies.
# It exports, for the target it just made:
#   LAB_ISCSI_IQN LAB_ISCSI_PORTAL (addr:port) LAB_ISCSI_PORTALS (space-separated)
#   LAB_ISCSI_LUN (0) LAB_ISCSI_SERIAL (the LUN's unit serial)
#   LAB_ISCSI_CHAP_USER LAB_ISCSI_CHAP_SECRET (chap, mutual)
#   LAB_ISCSI_CHAP_MUTUAL_USER LAB_ISCSI_CHAP_MUTUAL_SECRET (mutual)
#
# As a command (Vagrant, by hand):  iscsi-target.sh plain|chap|mutual|multipath [NAME]
# prints the same variables as `export` lines;  iscsi-target.sh stop  tears down.
#
# Settings: LAB_ISCSI_ADDR (portal address, default 127.0.0.1), LAB_ISCSI_SIZE_MB
# (512: mkfs.xfs refuses devices under 300 MB), LAB_ISCSI_INITIATOR (the initiator
# IQN the CHAP ACLs are for; default: this machine's /etc/iscsi/initiatorname.iscsi),
# LAB_ISCSI_BACKING (file, the default; or loop: the fileio backstore opens a loop device
# over the file, and LIO then reads the LUN's size from that device on every READ
# CAPACITY, so lab_iscsi_grow can grow it; over a plain file the size is fixed at creation).

_LAB_ISCSI_SELF=$(readlink -f "${BASH_SOURCE[0]}")
# shellcheck source=../lib/lab.sh
. "$(dirname "$_LAB_ISCSI_SELF")/../lib/lab.sh"

LAB_ISCSI_ADDR=${LAB_ISCSI_ADDR:-127.0.0.1}
LAB_ISCSI_SIZE_MB=${LAB_ISCSI_SIZE_MB:-512}
LAB_ISCSI_IQN_PREFIX=${LAB_ISCSI_IQN_PREFIX:-iqn.2024-01.dev.moor.lab}
_LAB_CFS=/sys/kernel/config/target

_lab_iscsi_configfs() {
  lab_modprobe configfs target_core_mod target_core_file iscsi_target_mod
  if ! mountpoint -q /sys/kernel/config; then
    mount -t configfs configfs /sys/kernel/config || lab_die "cannot mount configfs"
  fi
  [[ -d $_LAB_CFS/iscsi ]] || mkdir "$_LAB_CFS/iscsi" || lab_die "LIO iSCSI fabric not available in configfs"
}

_lab_iscsi_initiator_name() {
  if [[ -n ${LAB_ISCSI_INITIATOR:-} ]]; then echo "$LAB_ISCSI_INITIATOR"; return; fi
  sed -n 's/^InitiatorName=//p' /etc/iscsi/initiatorname.iscsi 2>/dev/null | head -n 1 | grep . \
    || lab_die "no initiator IQN: set LAB_ISCSI_INITIATOR or install open-iscsi"
}

# configfs attribute writes: printf %s, never echo — LIO keeps a trailing newline
# as part of CHAP secrets and the login then fails.
_lab_cfs_write() {
  printf '%s' "$2" > "$1" || lab_die "configfs write failed: $1 = $2"
}

_lab_iscsi_serial() { printf '%s' "moorlab-$1" | md5sum | cut -c1-32; }

_lab_iscsi_backstore() {
  local name=$1 dir=$_LAB_CFS/core/fileio_0/$1 file=$LAB_STATE/iscsi/$1.img
  mkdir -p "$LAB_STATE/iscsi"
  [[ -d $dir ]] && lab_die "backstore $name already exists"
  truncate -s "${LAB_ISCSI_SIZE_MB}M" "$file"   # sparse: costs nothing until written
  local backing=$file
  if [[ ${LAB_ISCSI_BACKING:-file} == loop ]]; then
    backing=$(losetup --find --show "$file") || lab_die "losetup of $file failed"
    printf '%s\n' "$backing" > "$LAB_STATE/iscsi/$name.loop"
  fi
  mkdir -p "$dir"
  _lab_cfs_write "$dir/control" "fd_dev_name=$backing,fd_dev_size=$((LAB_ISCSI_SIZE_MB * 1048576))"
  # LIO derives the LUN's NAA WWID from the hex digits of the unit serial: a hex
  # serial unique per name keeps WWIDs unique (dm-multipath must not merge two LUNs).
  _lab_cfs_write "$dir/wwn/vpd_unit_serial" "$(_lab_iscsi_serial "$name")"
  _lab_cfs_write "$dir/enable" 1
}

# _lab_iscsi_wait_ready IQN PORTAL… — the portal listens and SendTargets names the IQN.
_lab_iscsi_wait_ready() {
  local iqn=$1 portal; shift
  for portal in "$@"; do
    lab_wait_for 20 "iSCSI portal $portal listening" \
      sh -c "ss -Hltn 'sport = :${portal##*:}' | grep -q LISTEN"
    if command -v iscsiadm >/dev/null; then
      lab_iscsi_initiator
      # nonpersistent: a readiness probe must not leave node records behind.
      lab_wait_for 20 "SendTargets on $portal to list $iqn" \
        sh -c "iscsiadm -m discovery -t sendtargets -p '$portal' -o nonpersistent | grep -qF '$iqn'"
    fi
  done
}

lab_iscsi_initiator() {
  lab_modprobe iscsi_tcp
  if ! pgrep -x iscsid >/dev/null; then
    [[ -s /etc/iscsi/initiatorname.iscsi ]] || lab_die "/etc/iscsi/initiatorname.iscsi missing"
    if [[ -d /run/systemd/system ]]; then
      systemctl start iscsid.service || lab_die "systemctl start iscsid failed"
    else
      iscsid || lab_die "iscsid failed to start"
    fi
  fi
  lab_wait_for 10 "iscsid running" pgrep -x iscsid
}

lab_iscsi_target() {
  local mode=${1:?usage: lab_iscsi_target plain|chap|mutual|multipath [NAME]} name=${2:-$1}
  local iqn=$LAB_ISCSI_IQN_PREFIX:$name tpg portals=() portal acl initiator
  case $mode in plain|chap|mutual|multipath) ;; *) lab_die "unknown iSCSI target mode '$mode'" ;; esac
  lab_require_root
  _lab_iscsi_configfs
  _lab_iscsi_backstore "$name"
  tpg=$_LAB_CFS/iscsi/$iqn/tpgt_1
  mkdir -p "$tpg/lun/lun_0" || lab_die "cannot create target $iqn"
  ln -s "$_LAB_CFS/core/fileio_0/$name" "$tpg/lun/lun_0/$name"
  portals=("$LAB_ISCSI_ADDR:3260")
  [[ $mode == multipath ]] && portals+=("$LAB_ISCSI_ADDR:3261")
  for portal in "${portals[@]}"; do
    # Portals are shared between targets: LIO listens once per address:port.
    mkdir "$tpg/np/$portal" || lab_die "cannot create portal $portal"
  done

  unset LAB_ISCSI_CHAP_USER LAB_ISCSI_CHAP_SECRET LAB_ISCSI_CHAP_MUTUAL_USER LAB_ISCSI_CHAP_MUTUAL_SECRET
  case $mode in
    plain|multipath)
      # Demo mode: any initiator may log in, read-write.
      _lab_cfs_write "$tpg/attrib/authentication" 0
      _lab_cfs_write "$tpg/attrib/generate_node_acls" 1
      _lab_cfs_write "$tpg/attrib/cache_dynamic_acls" 1
      _lab_cfs_write "$tpg/attrib/demo_mode_write_protect" 0
      ;;
    chap|mutual)
      initiator=$(_lab_iscsi_initiator_name)
      acl=$tpg/acls/$initiator
      mkdir -p "$acl/lun_0"
      ln -s "$tpg/lun/lun_0" "$acl/lun_0/lun0"
      export LAB_ISCSI_CHAP_USER=lab-$name LAB_ISCSI_CHAP_SECRET=secret-$name-0123
      _lab_cfs_write "$acl/auth/userid" "$LAB_ISCSI_CHAP_USER"
      _lab_cfs_write "$acl/auth/password" "$LAB_ISCSI_CHAP_SECRET"
      if [[ $mode == mutual ]]; then
        export LAB_ISCSI_CHAP_MUTUAL_USER=target-$name LAB_ISCSI_CHAP_MUTUAL_SECRET=mutual-$name-4567
        _lab_cfs_write "$acl/auth/userid_mutual" "$LAB_ISCSI_CHAP_MUTUAL_USER"
        _lab_cfs_write "$acl/auth/password_mutual" "$LAB_ISCSI_CHAP_MUTUAL_SECRET"
      fi
      _lab_cfs_write "$tpg/attrib/authentication" 1
      _lab_cfs_write "$tpg/attrib/generate_node_acls" 0
      ;;
  esac
  _lab_cfs_write "$tpg/enable" 1

  export LAB_ISCSI_IQN=$iqn LAB_ISCSI_PORTAL=${portals[0]} LAB_ISCSI_PORTALS="${portals[*]}"
  export LAB_ISCSI_LUN=0 LAB_ISCSI_SERIAL
  LAB_ISCSI_SERIAL=$(_lab_iscsi_serial "$name")
  _lab_iscsi_wait_ready "$iqn" "${portals[@]}"
  lab_log "iSCSI target $mode ready: $iqn on ${portals[*]} (${LAB_ISCSI_SIZE_MB} MiB LUN 0)"
}

lab_iscsi_grow() {
  local name=${1:?usage: lab_iscsi_grow NAME SIZE_MB} mb=${2:?usage: lab_iscsi_grow NAME SIZE_MB} loop
  loop=$(cat "$LAB_STATE/iscsi/$name.loop" 2>/dev/null) || lab_die "LUN $name is not loop-backed (LAB_ISCSI_BACKING=loop)"
  truncate -s "${mb}M" "$LAB_STATE/iscsi/$name.img"
  losetup -c "$loop" || lab_die "losetup -c $loop failed"
  lab_log "iSCSI LUN $name grown to $mb MiB ($loop)"
}

lab_multipathd_start() {
  lab_modprobe dm_multipath
  printf 'defaults {\n  user_friendly_names no\n  find_multipaths no\n}\n' > /etc/multipath.conf
  multipathd || lab_die "multipathd failed to start"
}

lab_multipathd_stop() {
  multipath -F
  pkill -x multipathd
}

lab_iscsi_target_stop() {
  local iqn_dir tpg lun np acl link bs
  [[ -d $_LAB_CFS/iscsi ]] || return 0
  for iqn_dir in "$_LAB_CFS"/iscsi/"$LAB_ISCSI_IQN_PREFIX":*; do
    [[ -d $iqn_dir ]] || continue
    for tpg in "$iqn_dir"/tpgt_*; do
      printf 0 > "$tpg/enable" 2>/dev/null || true
      # configfs teardown is strictly bottom-up: links, then directories.
      for acl in "$tpg"/acls/*; do
        [[ -d $acl ]] || continue
        for link in "$acl"/lun_*/*; do [[ -L $link ]] && rm -f "$link"; done
        rmdir "$acl"/lun_* "$acl" 2>/dev/null || true
      done
      for lun in "$tpg"/lun/lun_*; do
        [[ -d $lun ]] || continue
        for link in "$lun"/*; do [[ -L $link ]] && rm -f "$link"; done
        rmdir "$lun"
      done
      for np in "$tpg"/np/*; do [[ -d $np ]] && rmdir "$np"; done
      rmdir "$tpg"
    done
    rmdir "$iqn_dir"
  done
  for bs in "$_LAB_CFS"/core/fileio_0/*; do
    [[ -d $bs && -e $LAB_STATE/iscsi/$(basename "$bs").img ]] || continue
    rmdir "$bs"
    if [[ -s $LAB_STATE/iscsi/$(basename "$bs").loop ]]; then
      losetup -d "$(cat "$LAB_STATE/iscsi/$(basename "$bs").loop")" 2>/dev/null || true
      rm -f "$LAB_STATE/iscsi/$(basename "$bs").loop"
    fi
    rm -f "$LAB_STATE/iscsi/$(basename "$bs").img"
  done
}

# Run as a command: print the variables for `eval`.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  case ${1:-} in
    stop) lab_iscsi_target_stop ;;
    plain|chap|mutual|multipath)
      lab_iscsi_target "$@" >&2
      for v in LAB_ISCSI_IQN LAB_ISCSI_PORTAL LAB_ISCSI_PORTALS LAB_ISCSI_LUN LAB_ISCSI_SERIAL \
               LAB_ISCSI_CHAP_USER LAB_ISCSI_CHAP_SECRET LAB_ISCSI_CHAP_MUTUAL_USER LAB_ISCSI_CHAP_MUTUAL_SECRET; do
        [[ -n ${!v:-} ]] && printf 'export %s=%q\n' "$v" "${!v}"
      done
      ;;
    *) echo "usage: $0 plain|chap|mutual|multipath [NAME] | stop" >&2; exit 2 ;;
  esac
fi
