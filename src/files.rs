//! What a file is, as far as a reload can tell without reading it: the watcher compares these
//! to see a change, and the policy and callers loads compare them before and after reading
//! their files to know the texts are of one version.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A file's identity and times, links followed (a Kubernetes volume's names are links into
/// `..data`). Size and modification time alone miss a file replaced by one of the same size
/// whose mtime was carried over or normalized (`cp -p`, `tar x`, rsync -a, Nix, a reproducible
/// build) or written within one tick of the file system's clock: a rotated secret (every AWS
/// secret has the same length) was never seen. A rename brings another inode, and any write
/// moves the change time, which no tool can set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    /// None when the file cannot be looked at (missing, a dangling link, no permission).
    pub fn of(path: &Path) -> Option<FileId> {
        let m = std::fs::metadata(path).ok()?;
        Some(FileId {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// Paths and what each is now, in the order given.
pub type Seen = Vec<(PathBuf, Option<FileId>)>;

pub fn seen(paths: impl IntoIterator<Item = PathBuf>) -> Seen {
    paths
        .into_iter()
        .map(|p| {
            let id = FileId::of(&p);
            (p, id)
        })
        .collect()
}

/// A path from a setting where a secret's file belongs (`secret_file`, `server.tls_key`,
/// `audit.hmac_key_file`) as messages show it: as it is when something is there (the message
/// is about that file), otherwise not at all. A secret pasted where its path belongs (an AWS
/// secret key, a PEM key with its newlines) names no file, and the error saying so would
/// print it to the log, `hubgate check` and /readyz; the message names the setting instead.
pub fn shown_secret_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    if path.symlink_metadata().is_ok() && !text.contains(char::is_control) {
        text.into_owned()
    } else {
        "(path not shown: nothing is there, and it could be a secret pasted in its place)"
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_same_size_same_mtime_replacement_is_another_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("member.secret");
        std::fs::write(&path, "A".repeat(40)).unwrap();
        let before = FileId::of(&path).unwrap();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let next = dir.path().join("member.secret.new");
        std::fs::write(&next, "B".repeat(40)).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&next)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_ne!(FileId::of(&path).unwrap(), before);
        assert_eq!(FileId::of(&dir.path().join("gone")), None);
    }

    #[test]
    fn a_secret_pasted_for_a_path_is_not_shown() {
        let dir = std::env::temp_dir();
        assert_eq!(shown_secret_path(&dir), dir.to_string_lossy());
        for pasted in [
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----",
        ] {
            let shown = shown_secret_path(&dir.join(pasted));
            assert!(
                !shown.contains("MIIE") && !shown.contains("K7MDENG"),
                "{shown}"
            );
        }
    }
}
