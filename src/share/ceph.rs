//! What the two Ceph drivers (RBD, CephFS) share: one reading of the monitor list and of
//! the cephx user's default, so one value means the same to `rbd` and to `mount.ceph`/ceph-fuse.

use crate::volume::{OptionsError, VolumeOptions, validate};

/// The cephx user moor is to the cluster when the options name none.
pub const DEFAULT_USER: &str = "admin";

/// The required `monitors` option of `driver`, normalised (`host[:port]`, IPv6 bracketed),
/// duplicates dropped, in the user's order.
pub fn monitors(opts: &VolumeOptions, driver: &str) -> Result<Vec<String>, OptionsError> {
    Ok(
        validate::monitors("monitors", opts.required(driver, "monitors")?)?
            .iter()
            .map(ToString::to_string)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> VolumeOptions {
        crate::volume::options::parse(&crate::volume::options::string_map(pairs)).unwrap()
    }

    /// rbd and cephfs read one monitor list the same way: normalised, deduplicated, and
    /// refused with the same message.
    #[test]
    fn one_monitor_list_for_both_drivers() {
        let o = opts(&[("monitors", " 10.0.0.1:6789,[fd00::1]:3300, 10.0.0.1:6789 ")]);
        assert_eq!(
            monitors(&o, "rbd").unwrap(),
            ["10.0.0.1:6789", "[fd00::1]:3300"]
        );
        assert_eq!(monitors(&o, "rbd"), monitors(&o, "cephfs"));
        let bad = opts(&[("monitors", "v2:10.0.0.1:3300")]);
        let (a, b) = (
            monitors(&bad, "rbd").unwrap_err(),
            monitors(&bad, "cephfs").unwrap_err(),
        );
        assert_eq!(a, b);
        assert!(
            a.to_string()
                .starts_with("option monitors=v2:10.0.0.1:3300: expected")
        );
        assert_eq!(
            monitors(&opts(&[]), "rbd").unwrap_err().to_string(),
            "option monitors is required by driver rbd"
        );
    }
}
