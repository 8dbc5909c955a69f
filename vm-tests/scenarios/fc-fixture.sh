#!/bin/bash
# moor~fc by WWID against a scsi_debug disk: found through sysfs, formatted, mounted; unmount deletes the SCSI device.
# vm: timeout=300
set -euo pipefail
. "$LAB_DIR/lib/lab.sh"
. "$LAB_DIR/lib/moor-node.sh"

lab_require_moor
modprobe scsi_debug dev_size_mb=64 || lab_die "modprobe scsi_debug failed"
lab_on_exit 'rmmod scsi_debug 2>/dev/null || true'
host=$(basename "$(dirname "$(grep -l scsi_debug /sys/class/scsi_host/host*/proc_name | head -n 1)")")
lab_wait_for 20 "scsi_debug disk" sh -c "ls /sys/class/scsi_host/$host/device/target*/*/block/ >/dev/null 2>&1"
sd=$(ls /sys/class/scsi_host/"$host"/device/target*/*/block/ | head -n 1)
wwid=$(cat /sys/block/"$sd"/device/wwid)
lab_log "scsi_debug on $host: $sd, wwid '$wwid'"

LOG=/tmp/moor-daemon.log
"$MOOR" daemon --metrics-addr off >"$LOG" 2>&1 &
DAEMON=$!
lab_on_exit "kill $DAEMON 2>/dev/null || true"
lab_wait_for 20 "moor socket" test -S /run/moor/moor.sock
opts() { jq -cn --arg w "$wwid" --arg uid "$1" '{ wwids: $w, "kubernetes.io/fsType": "ext4",
  "kubernetes.io/readwrite": "rw", "kubernetes.io/pod.uid": $uid, "kubernetes.io/pvOrVolumeName": "fc1" }'; }
UID1=22222222-0000-4000-8000-000000000001 UID2=22222222-0000-4000-8000-000000000002
POD1=$(lab_pod_volume_dir $UID1 fc fc1) POD2=$(lab_pod_volume_dir $UID2 fc fc1)
mkdir -p "$POD1" "$POD2"

lab_moor_flex mount "$POD1" "$(opts $UID1)" >/dev/null
lab_assert_mounted "$POD1"
lab_assert_eq "$(blkid -p -o value -s TYPE /dev/"$sd")" ext4 "filesystem moor made on $sd"
echo hello-fc > "$POD1/data"
lab_moor_flex unmount "$POD1" >/dev/null
lab_assert_eq "$(test -e /sys/block/"$sd" && echo present || echo gone)" gone "SCSI device $sd after the last unmount"
lab_step "found $sd by WWID, formatted ext4, mounted; unmount deleted the SCSI device"

echo "- - -" > /sys/class/scsi_host/"$host"/scan
lab_wait_for 20 "scsi_debug disk back" sh -c "ls /sys/class/scsi_host/$host/device/target*/*/block/ >/dev/null 2>&1"
lab_moor_flex mount "$POD2" "$(opts $UID2)" >/dev/null
lab_assert_eq "$(cat "$POD2/data")" hello-fc "data through a second pod dir after rescan"
lab_moor_flex unmount "$POD2" >/dev/null
lab_assert_eq "$(ls /sys/class/scsi_host/"$host"/device/target*/*/block/ 2>/dev/null | wc -l)" 0 "scsi_debug disks after the last unmount"
lab_step "rescan + remount: data intact through a second pod dir; deleted again on unmount"
