//! Local persistent volumes: a directory or a disk on this node, served only to this node.

mod driver;

pub use driver::LocalDriver;
