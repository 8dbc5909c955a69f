//! Block drivers: protocols whose attach makes a block device appear on this node (iSCSI,
//! Fibre Channel; shared SCSI sysfs logic in `scsi`). The lifecycle formats-if-blank and
//! mounts what they return, exactly like a local disk.

pub mod fc;
pub mod iscsi;
pub mod iscsiadm;
pub mod scsi;
