//! A small disk: a tmpfs data directory that a test can fill up and free again.

use std::path::PathBuf;

/// A tmpfs for a data directory (unmounted on drop) that a test can make full: remounted with
/// its size set to what it holds, then back. Needs root (`mount`).
pub struct SmallDisk {
    dir: PathBuf,
}

/// The size of the tmpfs when it is not full (a limit, not memory taken).
const ROOMY: &str = "size=64g";

impl SmallDisk {
    /// Mounts a tmpfs on `dir` (created if needed); the error says why it could not.
    pub fn mount(dir: &std::path::Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        mount(dir, &["-t", "tmpfs", "-o", ROOMY, "tmpfs"])?;
        Ok(Self { dir: dir.to_owned() })
    }

    /// No free space left: the size becomes what is used, plus a few pages. A tmpfs cannot
    /// shrink below what it holds, so when writes grow it between the reading and the remount,
    /// this reads again and retries.
    pub fn fill(&self) {
        let mut tries = 0;
        loop {
            let out = std::process::Command::new("df").args(["-B1", "--output=used"]).arg(&self.dir).output().expect("run df");
            let text = String::from_utf8_lossy(&out.stdout);
            let used: u64 = text.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("df: {text}"));
            match mount(&self.dir, &["-o", &format!("remount,size={}", used + 16 * 1024)]) {
                Ok(()) => return,
                Err(e) if tries >= 20 => panic!("shrink the tmpfs: {e}"),
                Err(_) => tries += 1,
            }
        }
    }

    pub fn free(&self) {
        mount(&self.dir, &["-o", &format!("remount,{ROOMY}")]).expect("grow the tmpfs");
    }
}

/// `mount ARGS DIR`; the error is what `mount` said.
fn mount(dir: &std::path::Path, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("mount").args(args).arg(dir).output().map_err(|e| format!("running mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount {} {}: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
