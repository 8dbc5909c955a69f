#!/bin/bash
# The Vagrant boxes' provisioning (vm-tests/vagrant/provision), storage and node roles on one guest.
# vm: systemd=1 timeout=420
set -euo pipefail
. "$LAB_DIR/lib/lab.sh"
. "$LAB_DIR/lib/moor-node.sh"
lab_require_moor

NODE_IQN=$(sed -n 's/^InitiatorName=//p' /etc/iscsi/initiatorname.iscsi)
# The provisioner expects to find the repo around it; the lab share is laid out the same.
lab_run "$LAB_DIR/vagrant/provision" storage 127.0.0.1 "$NODE_IQN"
. /etc/moor-lab/storage.env
lab_step "storage role: targets and export provisioned"
lab_run env MOOR_BIN="$MOOR" "$LAB_DIR/vagrant/provision" node 127.0.0.1 127.0.0.1 "$NODE_IQN"
lab_assert_eq "$(systemctl is-active moor.service)" active "moor.service"
lab_assert_eq "$(readlink "$LAB_FLEX_DIR/moor~local/local")" "$MOOR" "FlexVolume link"
lab_step "node role: moor.service active, FlexVolume driver linked"

# The node can use what the storage box serves.
iscsiadm -m discovery -t sendtargets -p 127.0.0.1:3260 -o nonpersistent | grep -qF "$ISCSI_CHAP_IQN" \
  || lab_die "the node does not discover $ISCSI_CHAP_IQN"
showmount -e "$NFS_SERVER" | grep -qF "$NFS_EXPORT" || lab_die "the node does not see $NFS_EXPORT"
lab_step "node discovers the iSCSI targets and sees the NFS export"

# Provisioning twice is safe (vagrant provision after vagrant up).
lab_run "$LAB_DIR/vagrant/provision" storage 127.0.0.1 "$NODE_IQN"
lab_run env MOOR_BIN="$MOOR" "$LAB_DIR/vagrant/provision" node 127.0.0.1 127.0.0.1 "$NODE_IQN"
lab_step "re-provisioning both roles works"
