//! A small disk: a tmpfs data directory that a test can fill up and free again.

use std::path::PathBuf;

/// A tmpfs for a data directory (unmounted on drop) that a test can make full: remounted with
/// its size set to what it holds, then back. Needs root (`mount`); `mount` returns `None` without.
pub struct SmallDisk {
    dir: PathBuf,
}

/// The size of the tmpfs when it is not full (a limit, not memory taken).
const ROOMY: &str = "size=64g";

impl SmallDisk {
    pub fn mount(dir: &std::path::Path) -> Option<Self> {
        std::fs::create_dir_all(dir).ok()?;
        let d = Self { dir: dir.to_owned() };
        d.mount_cmd(&["-t", "tmpfs", "-o", ROOMY, "tmpfs"]).then_some(d)
    }

    fn mount_cmd(&self, args: &[&str]) -> bool {
        std::process::Command::new("mount")
            .args(args)
            .arg(&self.dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// No free space left: the size becomes what is used, plus a few pages.
    pub fn fill(&self) {
        let out = std::process::Command::new("df").args(["-B1", "--output=used"]).arg(&self.dir).output();
        let used: Option<u64> = out.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).lines().nth(1)?.trim().parse().ok());
        if let Some(used) = used {
            self.mount_cmd(&["-o", &format!("remount,size={}", used + 16 * 1024)]);
        }
    }

    pub fn free(&self) {
        self.mount_cmd(&["-o", &format!("remount,{ROOMY}")]);
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
