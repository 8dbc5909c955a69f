//! Pure parser of `/proc/<pid>/mountinfo` (proc(5)).
//!
//! Invariant: parsing never touches the machine; every path is unescaped exactly once
//! (the kernel escapes space, tab, newline and backslash as `\ooo` octal).

use std::path::PathBuf;

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Unique mount id.
    pub mount_id: u64,
    /// Parent mount id.
    pub parent_id: u64,
    /// Device major number of the filesystem.
    pub major: u32,
    /// Device minor number of the filesystem.
    pub minor: u32,
    /// Path inside the filesystem that forms this mount's root.
    pub root: PathBuf,
    /// Where it is mounted, in this process's namespace.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`, `ro`, `nosuid` …).
    pub mount_options: String,
    /// Optional fields (`shared:N`, `master:N` …).
    pub optional: Vec<String>,
    /// Filesystem type, e.g. `ext4`, `fuse.glusterfs`.
    pub fs_type: String,
    /// Mount source (device, `server:/export`, …).
    pub source: String,
    /// Superblock options.
    pub super_options: String,
}

impl MountInfo {
    /// True when this mount is read-only at the mount level.
    pub fn is_read_only(&self) -> bool {
        self.mount_options.split(',').any(|o| o == "ro")
    }
}

/// A line that could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("mountinfo line {line}: {what}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub what: &'static str,
}

/// Parses a whole mountinfo text.
pub fn parse(text: &str) -> Result<Vec<MountInfo>, ParseError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_line(l).map_err(|what| ParseError { line: i + 1, what }))
        .collect()
}

/// Parses one mountinfo line.
pub fn parse_line(line: &str) -> Result<MountInfo, &'static str> {
    let mut fields = line.split(' ');
    let mut next = |what| fields.next().filter(|f| !f.is_empty()).ok_or(what);
    let mount_id = next("missing mount id")?
        .parse()
        .map_err(|_| "bad mount id")?;
    let parent_id = next("missing parent id")?
        .parse()
        .map_err(|_| "bad parent id")?;
    let (major, minor) = next("missing major:minor")?
        .split_once(':')
        .ok_or("bad major:minor")?;
    let major = major.parse().map_err(|_| "bad major")?;
    let minor = minor.parse().map_err(|_| "bad minor")?;
    let root = PathBuf::from(unescape(next("missing root")?));
    let mount_point = PathBuf::from(unescape(next("missing mount point")?));
    let mount_options = next("missing mount options")?.to_owned();
    let mut optional = Vec::new();
    loop {
        let f = next("missing separator")?;
        if f == "-" {
            break;
        }
        optional.push(f.to_owned());
    }
    let fs_type = unescape(next("missing fs type")?);
    // The source may legitimately be empty on some pseudo filesystems ("none" is typical,
    // but an empty field shows up as two spaces), so it is read leniently.
    let source = unescape(fields.next().ok_or("missing source")?);
    let super_options = fields.next().unwrap_or_default().to_owned();
    Ok(MountInfo {
        mount_id,
        parent_id,
        major,
        minor,
        root,
        mount_point,
        mount_options,
        optional,
        fs_type,
        source,
        super_options,
    })
}

/// Undoes the kernel's `\ooo` octal escaping.
pub fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        // `\ooo` is one byte, so at most `\377`: the kernel writes nothing larger, and a
        // larger one (which would overflow the byte) is kept as the text it is.
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && (b'0'..=b'3').contains(&bytes[i + 1])
            && bytes[i + 2..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The kernel's escaping, for tests and fixtures.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            ' ' => out.push_str("\\040"),
            '\t' => out.push_str("\\011"),
            '\n' => out.push_str("\\012"),
            '\\' => out.push_str("\\134"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FIXTURE: &str = include_str!("../../tests/fixtures/mountinfo-kubelet.txt");

    #[test]
    fn parses_a_real_table() {
        let table = parse(FIXTURE).unwrap();
        assert!(table.len() > 5);
        let root = &table[0];
        assert_eq!(root.mount_point, PathBuf::from("/"));
        let stage = table
            .iter()
            .find(|m| m.mount_point.ends_with("plugins/moor/local/vol one"))
            .expect("stage mount with an escaped space");
        assert_eq!(stage.fs_type, "ext4");
        assert_eq!(stage.source, "/dev/loop3");
        assert_eq!((stage.major, stage.minor), (7, 3));
        let ro = table
            .iter()
            .find(|m| m.mount_point.ends_with("volumes/moor~local/ro-vol"))
            .unwrap();
        assert!(ro.is_read_only());
        assert_eq!(ro.optional, vec!["shared:500".to_owned()]);
        let nfs = table.iter().find(|m| m.fs_type == "nfs4").unwrap();
        assert_eq!(nfs.source, "10.0.0.5:/exports/a");
    }

    #[test]
    fn rejects_truncated_lines() {
        assert_eq!(
            parse("36 35 98:0 /mnt1 /mnt2 rw").unwrap_err().what,
            "missing separator"
        );
        assert_eq!(
            parse("x 35 98:0 / / rw - ext4 /dev/x rw").unwrap_err().what,
            "bad mount id"
        );
    }

    #[test]
    fn octal_escapes_beyond_a_byte_are_kept_as_text() {
        // Found by the mountinfo fuzz target: `\777` overflowed the byte being decoded.
        for raw in ["\\400", "\\477", "\\777", "a\\7771", "\\4000"] {
            assert_eq!(unescape(raw), raw, "{raw}");
            let line = format!("40 1 8:1 {raw} /m{raw} rw - x{raw} s{raw} rw");
            let m = parse_line(&line).unwrap();
            assert_eq!(m.root, PathBuf::from(raw));
            assert_eq!(m.mount_point, PathBuf::from(format!("/m{raw}")));
            assert_eq!(m.fs_type, format!("x{raw}"));
            assert_eq!(m.source, format!("s{raw}"));
        }
        assert_eq!(unescape("\\377\\000\\040"), "\u{FFFD}\0 ");
    }

    proptest! {
        #[test]
        fn any_text_unescapes_without_panicking(s in "(\\\\[0-9]{0,4}|[ -~]){0,20}") {
            let _ = unescape(&s);
        }

        #[test]
        fn escape_round_trips(s in "[ -~\t\n]{0,40}") {
            prop_assert_eq!(unescape(&escape(&s)), s);
        }

        #[test]
        fn mount_points_round_trip(p in "/[a-z \t\\\\]{1,30}") {
            let line = format!("40 1 8:1 / {} rw,relatime shared:1 - ext4 /dev/sda1 rw", escape(&p));
            let m = parse_line(&line).unwrap();
            prop_assert_eq!(m.mount_point, PathBuf::from(p));
        }
    }
}
