//! Kernel source trees: Debian's `linux-source-<series>` package, downloaded once, unpacked into
//! the cache and handed out as a plain directory. For tests and for users without a tree of
//! their own.
//!
//! Cache layout: `<cache>/kernel-source/linux-source-<series>_<version>/linux-source-<series>/`.
//! The entry is built in a temp dir and renamed into place under its lock, like the kernels.
//! Treat the tree as read-only: build it with `make O=DIR`, or copy it first.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::apt::{self, AptRepo};
use crate::error::{at, Error, IoContext, Result};
use crate::kernel::{parse_version, VersionSpec};
use crate::util::{self, Step};
use crate::{Arch, Cache};

/// An unpacked Debian kernel source tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSource {
    /// The top of the tree (holds `Makefile`, `arch/`, `drivers/`).
    pub dir: PathBuf,
    /// The package it came from, e.g. `linux-source-6.12`.
    pub package: String,
    /// Its Debian version, e.g. `6.12.57-1`.
    pub version: String,
    /// The suite it came from (`trixie`, ...).
    pub suite: String,
}

/// The suites to look in for a series: the suite whose kernel it is (6.1 bookworm, 6.12 trixie,
/// 7.2 sid), else sid and the backports.
fn suites_for(series: &str) -> Result<Vec<&'static str>> {
    match parse_version(series, Arch::host())? {
        VersionSpec::Series { suites, .. } => Ok(suites),
        VersionSpec::Exact { .. } => Err(Error::invalid(
            format!("`{series}` is not a kernel series"),
            "pass a series such as 6.12 (linux-source-6.12)",
        )),
    }
}

/// Download (once) Debian's `linux-source-<series>` and unpack its tarball; returns the tree.
///
/// `series`: "6.1" (bookworm), "6.12" (trixie), "7.2" (sid) or another `X.Y` looked up in sid and
/// the backports. The package is architecture-independent, so the host's architecture's lists
/// are used. Needs `tar` and `xz` on the host (package `xz-utils`).
pub fn provision_kernel_source(cache: &Cache, series: &str) -> Result<KernelSource> {
    let series = series.trim();
    let suites = suites_for(series)?;
    let package = format!("linux-source-{series}");
    let host = Arch::host().debian();
    let mut found = None;
    for suite in &suites {
        let repo = AptRepo::open(cache, suite, host)?;
        if let Some(st) = repo.show(&package)? {
            let version = st.get("Version").unwrap_or_default().to_string();
            found = Some((repo, version));
            break;
        }
    }
    let (repo, version) = found.ok_or_else(|| {
        Error::not_found(
            format!("no package {package} in Debian {}", suites.join("/")),
            "ask for a series Debian ships sources for: 6.1, 6.12 or 7.2",
        )
    })?;
    let entry = cache.root.join("kernel-source").join(format!(
        "{}_{}",
        util::sanitize(&package),
        util::sanitize(&version)
    ));
    util::ensure_entry(&entry, |tmp| {
        build_source_entry(&repo, &package, &version, tmp)
    })?;
    let dir = find_tree(&entry).ok_or_else(|| {
        Error::not_found(
            format!(
                "kernel source cache entry {} is incomplete",
                entry.display()
            ),
            format!("delete {} and retry", entry.display()),
        )
    })?;
    Ok(KernelSource {
        dir,
        package,
        version,
        suite: repo.suite.clone(),
    })
}

/// The one directory in `entry` holding a kernel `Makefile`.
fn find_tree(entry: &Path) -> Option<PathBuf> {
    fs::read_dir(entry)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("Makefile").is_file() && p.join("Kconfig").is_file())
}

fn build_source_entry(repo: &AptRepo, package: &str, version: &str, tmp: &Path) -> Result<()> {
    let tar = util::require_tool("tar", "tar")?;
    util::require_tool("xz", "xz-utils")?;
    let step = Step::start(format!("downloading {package} {version}"));
    let debs = repo.download(
        &[(package.to_string(), version.to_string())],
        &tmp.join("debs"),
    )?;
    step.done();
    let unpacked = tmp.join("deb");
    for deb in &debs {
        apt::extract_deb(deb, &unpacked)?;
    }
    fs::remove_dir_all(tmp.join("debs")).ctx(at("cannot remove", &tmp.join("debs")))?;
    let src = unpacked.join("usr/src");
    let tarball = fs::read_dir(&src)
        .ctx(at("cannot list", &src))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy())
                .is_some_and(|n| n.starts_with("linux-source-") && n.contains(".tar"))
        })
        .ok_or_else(|| {
            Error::not_found(
                format!("no linux-source-*.tar.* in {package}'s usr/src"),
                "report this: the Debian package layout changed",
            )
        })?;
    let step = Step::start(format!(
        "unpacking {}",
        tarball
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let mut cmd = Command::new(tar);
    cmd.arg("-xf").arg(&tarball).arg("-C").arg(tmp);
    util::run(&mut cmd, "the download may be corrupt; retry")?;
    fs::remove_dir_all(&unpacked).ctx(at("cannot remove", &unpacked))?;
    step.done();
    if find_tree(tmp).is_none() {
        return Err(Error::not_found(
            format!("{} holds no kernel tree", tarball.display()),
            "report this: the Debian package layout changed",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_pick_suites() {
        assert_eq!(suites_for("6.12").unwrap(), ["trixie"]);
        assert_eq!(suites_for("6.1").unwrap(), ["bookworm"]);
        assert!(suites_for("6.12.57+deb13").is_err());
        assert!(suites_for("latest").is_err());
    }

    #[test]
    fn tree_is_the_dir_with_a_makefile() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("junk")).unwrap();
        let t = d.path().join("linux-source-6.12");
        fs::create_dir_all(&t).unwrap();
        assert_eq!(find_tree(d.path()), None);
        fs::write(t.join("Makefile"), "").unwrap();
        fs::write(t.join("Kconfig"), "").unwrap();
        assert_eq!(find_tree(d.path()), Some(t));
    }
}
