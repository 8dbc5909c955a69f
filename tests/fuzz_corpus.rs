//! Replays the kept fuzz corpus (`fuzz/corpus/<target>/`) through the same `moor::fuzzing`
//! functions the cargo-fuzz targets call, on stable and unprivileged: an input that once
//! crashed a parser, or that the fuzzer found interesting, fails CI if it breaks again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn replay(target: &str) {
    let (_, f) = moor::fuzzing::TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .unwrap_or_else(|| panic!("no fuzz target {target} in moor::fuzzing::TARGETS"));
    let dir = corpus(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    // An empty corpus would make this test pass without replaying anything.
    assert!(
        files.len() >= 3,
        "corpus {} has {} inputs",
        dir.display(),
        files.len()
    );
    for p in files {
        let data = std::fs::read(&p).unwrap();
        let outcome = std::panic::catch_unwind(|| f(&data));
        assert!(
            outcome.is_ok(),
            "fuzz target {target} fails on {}",
            p.display()
        );
    }
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { replay(stringify!($name)); })*

        /// Every target has a test here, a cargo-fuzz binary and a corpus, and nothing else does.
        #[test]
        fn every_target_is_replayed_and_built() {
            let mut here = vec![$(stringify!($name)),*];
            here.sort();
            let mut listed: Vec<&str> = moor::fuzzing::TARGETS.iter().map(|(n, _)| *n).collect();
            listed.sort();
            assert_eq!(here, listed);
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
            let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
            for n in &listed {
                let src = root.join("fuzz_targets").join(format!("{n}.rs"));
                let body = std::fs::read_to_string(&src)
                    .unwrap_or_else(|e| panic!("{}: {e}", src.display()));
                assert!(body.contains(&format!("moor::fuzzing::{n}(")), "{}", src.display());
                assert!(manifest.contains(&format!("name = \"{n}\"")), "{n} not in fuzz/Cargo.toml");
                assert!(corpus(n).is_dir(), "no corpus for {n}");
            }
        }
    };
}

replay_tests!(
    flexvolume,
    api_request,
    mountinfo,
    blkid_export,
    superblock,
    rbd_json,
    sysfs,
    iscsi,
    udev,
    config,
);
