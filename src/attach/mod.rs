//! Block drivers: protocols whose attach makes a remote disk appear as a local block device
//! (iSCSI, Ceph RBD, Fibre Channel; shared SCSI sysfs logic in `scsi`) and makes it go away,
//! and nothing more — probing, formatting and mounting are the lifecycle's, exactly as for a
//! local disk.

pub mod fc;
pub mod iscsi;
pub mod iscsiadm;
pub mod rbd;
pub mod scsi;
