//! The composition root of the driver table: the one place that names every driver moor
//! ships. `volume/` defines the trait and the table, the drivers implement it, and nothing
//! below the daemon knows which drivers exist.

use std::sync::Arc;

use crate::host::HostPaths;
use crate::host::allow::AllowList;
use crate::host::devid::IdSources;
use crate::volume::Drivers;

/// Every driver moor ships (`moor~local` with the defaults; the daemon replaces it with one
/// serving the node's configured allow-list).
pub fn builtin() -> Drivers {
    let mut d = Drivers::default();
    d.add(Arc::new(crate::local::LocalDriver::default()));
    d.add(Arc::new(crate::attach::rbd::RbdDriver));
    d.add(Arc::new(crate::share::NfsDriver));
    d.add(Arc::new(crate::share::GlusterFsDriver));
    d.add(Arc::new(crate::share::CephFsDriver));
    d.add(Arc::new(crate::attach::iscsi::IscsiDriver::default()));
    d.add(Arc::new(crate::attach::fc::FcDriver));
    d
}

/// `drivers` with `moor~local` serving `allow` (its directories and devices), reading
/// device identities from `ids`. kubelet's dir, moor's state and run dirs and the kernel's
/// `/proc`, `/sys` and `/dev` of `paths` are refused whatever `allow` says.
pub fn with_local_sources(
    mut drivers: Drivers,
    paths: &HostPaths,
    mut allow: AllowList,
    ids: IdSources,
) -> Drivers {
    allow.refused.extend(
        [
            Some(&paths.kubelet_dir),
            paths.kubelet_alias.as_ref(),
            Some(&paths.state_dir),
            Some(&paths.run_dir),
            Some(&paths.proc),
            Some(&paths.sys),
            Some(&paths.dev),
        ]
        .into_iter()
        .flatten()
        .cloned(),
    );
    allow.proc = paths.proc.clone();
    drivers.add(Arc::new(crate::local::LocalDriver {
        sources: crate::local::driver::LocalSources {
            allow: Arc::new(allow),
            ids,
        },
    }));
    drivers
}

#[cfg(test)]
mod tests {
    /// The table serves exactly the drivers the FlexVolume front end accepts.
    #[test]
    fn the_table_serves_every_front_end_driver() {
        let mut want: Vec<&str> = crate::flexvolume::DRIVERS.to_vec();
        want.sort_unstable();
        assert_eq!(super::builtin().names(), want);
    }
}
