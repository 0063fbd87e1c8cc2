//! Private apt configurations (one per suite and architecture) living in the cache, used to look up
//! and download Debian packages of any architecture without touching the host's apt state.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::error::{at, Error, IoContext, Result};
use crate::util::{self, EntryLock, Step};
use crate::Cache;

/// The Debian mirror all private apt configurations use.
pub(crate) const MIRROR: &str = "http://deb.debian.org/debian";

/// Package lists older than this are refreshed (when the network allows).
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Index targets the host's apt.conf.d may enable that we never need (AppStream metadata etc.).
const DISABLED_TARGETS: &[&str] = &[
    "DEP-11",
    "DEP-11-icons",
    "DEP-11-icons-small",
    "DEP-11-icons-hidpi",
    "Contents-deb",
    "Contents-udeb",
    "Translations",
];

/// One paragraph of `apt-cache show` output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stanza {
    pub fields: BTreeMap<String, String>,
}

impl Stanza {
    pub(crate) fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }

    /// The `Depends` (and `Pre-Depends`) relation as groups of alternatives, names only.
    pub(crate) fn depends(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for f in ["Pre-Depends", "Depends"] {
            if let Some(v) = self.get(f) {
                out.extend(parse_relations(v));
            }
        }
        out
    }
}

/// Parse `apt-cache show` output into stanzas (first = the candidate apt lists first).
pub(crate) fn parse_stanzas(text: &str) -> Vec<Stanza> {
    let mut out = Vec::new();
    let mut cur = Stanza::default();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.fields.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            last = None;
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(k) = &last {
                if let Some(v) = cur.fields.get_mut(k) {
                    v.push('\n');
                    v.push_str(line.trim());
                }
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim().to_string();
            cur.fields.insert(k.clone(), v.trim().to_string());
            last = Some(k);
        }
    }
    if !cur.fields.is_empty() {
        out.push(cur);
    }
    out
}

/// Parse a Debian relation field (`a (>= 1) | b:any, c [amd64]`) into groups of package names.
pub(crate) fn parse_relations(field: &str) -> Vec<Vec<String>> {
    field
        .split(',')
        .map(|group| {
            group
                .split('|')
                .filter_map(|alt| {
                    let name = alt.split_whitespace().next()?;
                    let name = name.split(['(', '[', '<']).next()?;
                    let name = name.split(':').next()?;
                    (!name.is_empty()).then(|| name.to_string())
                })
                .collect::<Vec<_>>()
        })
        .filter(|g| !g.is_empty())
        .collect()
}

/// A private apt setup for one suite and Debian architecture, under `<cache>/apt/<suite>-<arch>`.
pub(crate) struct AptRepo {
    pub suite: String,
    pub arch: String,
    dir: PathBuf,
    conf: PathBuf,
}

impl AptRepo {
    /// Create (or reuse) the configuration and refresh the lists if older than a day.
    pub(crate) fn open(cache: &Cache, suite: &str, arch: &str) -> Result<AptRepo> {
        let apt_get = util::require_tool("apt-get", "apt")?;
        let dir = cache.root.join("apt").join(format!("{suite}-{arch}"));
        let repo = AptRepo {
            suite: suite.to_string(),
            arch: arch.to_string(),
            conf: dir.join("apt.conf"),
            dir,
        };
        {
            let _lock = EntryLock::acquire(&repo.dir, true)?;
            repo.write_config()?;
            repo.refresh(&apt_get)?;
        }
        Ok(repo)
    }

    fn write_config(&self) -> Result<()> {
        let d = &self.dir;
        for sub in [
            "lists/partial",
            "cache/archives/partial",
            "sources.list.d",
            "preferences.d",
        ] {
            util::create_dir_all(&d.join(sub))?;
        }
        let ds = d.to_string_lossy();
        if ds.contains('"') {
            return Err(Error::invalid(
                format!("cache path {} contains a double quote", d.display()),
                "set VANISH_CACHE to a plain path",
            ));
        }
        let status = d.join("status");
        if !status.exists() {
            fs::write(&status, b"").ctx(at("cannot write", &status))?;
        }
        let sources = format!("deb {MIRROR} {} main\n", self.suite);
        write_if_changed(&d.join("sources.list"), &sources)?;
        let mut conf = format!(
            "// Generated by vanish: private apt state for {suite} {arch}.\n\
             Dir::Etc::SourceList \"{ds}/sources.list\";\n\
             Dir::Etc::SourceParts \"{ds}/sources.list.d\";\n\
             Dir::Etc::Preferences \"{ds}/preferences\";\n\
             Dir::Etc::PreferencesParts \"{ds}/preferences.d\";\n\
             Dir::State \"{ds}\";\n\
             Dir::State::Lists \"{ds}/lists\";\n\
             Dir::State::status \"{ds}/status\";\n\
             Dir::State::extended_states \"{ds}/extended_states\";\n\
             Dir::Cache \"{ds}/cache\";\n\
             Dir::Cache::pkgcache \"pkgcache.bin\";\n\
             Dir::Cache::srcpkgcache \"\";\n\
             APT::Sandbox::User \"root\";\n\
             Acquire::Languages \"none\";\n\
             Acquire::Retries \"3\";\n",
            suite = self.suite,
            arch = self.arch,
        );
        for t in DISABLED_TARGETS {
            conf.push_str(&format!(
                "Acquire::IndexTargets::deb::{t}::DefaultEnabled \"false\";\n"
            ));
        }
        write_if_changed(&self.conf, &conf)
    }

    /// `apt-get`/`apt-cache` with this repo's configuration.
    fn apt(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        c.arg("-c")
            .arg(&self.conf)
            .arg("-o")
            .arg(format!("APT::Architecture={}", self.arch))
            .arg("-o")
            .arg(format!("APT::Architectures={}", self.arch))
            .env("LC_ALL", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive");
        c
    }

    fn stamp(&self) -> PathBuf {
        self.dir.join("lists-updated")
    }

    fn have_lists(&self) -> bool {
        fs::read_dir(self.dir.join("lists"))
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
            })
            .unwrap_or(false)
    }

    fn refresh(&self, apt_get: &Path) -> Result<()> {
        let fresh = fs::metadata(self.stamp())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < LISTS_MAX_AGE);
        if fresh && self.have_lists() {
            return Ok(());
        }
        let step = Step::start(format!(
            "updating package lists for Debian {} ({})",
            self.suite, self.arch
        ));
        let mut cmd = self.apt(&apt_get.to_string_lossy());
        cmd.arg("update");
        let out = util::run_status(&mut cmd)?;
        // apt-get update exits 0 even when a source failed; it reports that with "E:"/"W:" lines.
        let failed = !out.status.success()
            || String::from_utf8_lossy(&out.stderr).lines().any(|l| {
                l.starts_with("E:") || l.starts_with("W: Failed") || l.starts_with("Err:")
            })
            || !self.have_lists();
        if failed {
            drop(step);
            let err = util::command_failed(
                &cmd,
                &out,
                &format!("check network access to {MIRROR} (or a proxy in /etc/apt/apt.conf.d)"),
            );
            if self.have_lists() {
                util::note(format!(
                    "warning: could not refresh package lists for {} {}, using the old ones ({err})",
                    self.suite, self.arch
                ));
                return Ok(());
            }
            return Err(err);
        }
        // Build apt's binary cache now, under the exclusive lock, so that later concurrent readers
        // never write it.
        let mut gen = self.apt("apt-cache");
        gen.arg("gencaches");
        util::run(
            &mut gen,
            "delete the apt directory in the vanish cache and retry",
        )?;
        fs::write(self.stamp(), b"").ctx(at("cannot write", &self.stamp()))?;
        step.done();
        Ok(())
    }

    /// `apt-cache show PKG` (or `PKG=VERSION`): the first (candidate) stanza, or None if unknown.
    pub(crate) fn show(&self, pkg: &str) -> Result<Option<Stanza>> {
        let _lock = EntryLock::acquire(&self.dir, false)?;
        let mut cmd = self.apt("apt-cache");
        cmd.arg("show").arg("--no-all-versions").arg(pkg);
        let out = util::run_status(&mut cmd)?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("No packages found") || err.contains("Unable to locate") {
                return Ok(None);
            }
            return Err(util::command_failed(
                &cmd,
                &out,
                "delete the apt directory in the vanish cache to force a fresh download",
            ));
        }
        let stanzas = parse_stanzas(&String::from_utf8_lossy(&out.stdout));
        Ok(stanzas
            .into_iter()
            .find(|s| s.get("Package").is_some() && s.get("Version").is_some()))
    }

    /// Like [`AptRepo::show`] but a missing package is an error.
    pub(crate) fn show_required(&self, pkg: &str) -> Result<Stanza> {
        self.show(pkg)?.ok_or_else(|| {
            Error::not_found(
                format!(
                    "package {pkg} not found in Debian {} ({})",
                    self.suite, self.arch
                ),
                "check the name/version; old kernel versions disappear from the mirror after point releases",
            )
        })
    }

    /// Download `name=version` packages into `dest`, returning the .deb files.
    pub(crate) fn download(&self, pkgs: &[(String, String)], dest: &Path) -> Result<Vec<PathBuf>> {
        let _lock = EntryLock::acquire(&self.dir, false)?;
        util::create_dir_all(dest)?;
        let mut cmd = self.apt("apt-get");
        cmd.arg("download").current_dir(dest);
        for (n, v) in pkgs {
            cmd.arg(format!("{n}={v}"));
        }
        util::run(
            &mut cmd,
            &format!("check network access to {MIRROR}; if the package was just removed from the mirror, delete <cache>/apt to refresh the lists"),
        )?;
        let mut debs: Vec<PathBuf> = fs::read_dir(dest)
            .ctx(at("cannot list", dest))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "deb"))
            .collect();
        debs.sort();
        if debs.len() != pkgs.len() {
            return Err(Error::not_found(
                format!(
                    "apt-get download produced {} .deb files for {} packages in {}",
                    debs.len(),
                    pkgs.len(),
                    dest.display()
                ),
                "retry; if it persists delete <cache>/apt",
            ));
        }
        Ok(debs)
    }
}

fn write_if_changed(path: &Path, content: &str) -> Result<()> {
    if fs::read_to_string(path).ok().as_deref() == Some(content) {
        return Ok(());
    }
    fs::write(path, content).ctx(at("cannot write", path))
}

/// Unpack a .deb with `dpkg-deb -x`.
pub(crate) fn extract_deb(deb: &Path, dest: &Path) -> Result<()> {
    let dpkg_deb = util::require_tool("dpkg-deb", "dpkg")?;
    util::create_dir_all(dest)?;
    let mut cmd = Command::new(dpkg_deb);
    cmd.arg("-x").arg(deb).arg(dest);
    util::run(&mut cmd, "the download may be corrupt; retry")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "\
Package: linux-image-7.2.13+deb14-arm64
Source: linux-signed-arm64 (7.2.13+1)
Version: 7.2.13-1
Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, linux-base-7.2.13+deb14-arm64 (= 7.2.13-1), linux-binary-7.2.13+deb14-arm64 (= 7.2.13-1), linux-modules-7.2.13+deb14-arm64 (= 7.2.13-1)
Pre-Depends: linux-base (>= 4.17~)
Recommends: apparmor
Description: Linux 7.2 for 64-bit ARMv8 machines (signed)
 The Linux kernel 7.2 and modules for use on ARMv8 machines.
 .
 More text.

Package: linux-image-7.2.12+deb14-arm64
Version: 7.2.12-1
Depends: kmod:any, linux-base [arm64]

";

    #[test]
    fn show_output_parses_into_stanzas_and_depends() {
        let st = parse_stanzas(SHOW);
        assert_eq!(st.len(), 2);
        assert_eq!(st[0].get("Version"), Some("7.2.13-1"));
        assert!(st[0].get("Description").unwrap().contains("More text."));
        let deps = st[0].depends();
        assert_eq!(deps[0], vec!["linux-base"]);
        assert_eq!(
            deps[1],
            vec!["dracut", "initramfs-tools", "linux-initramfs-tool"]
        );
        assert_eq!(deps[3], vec!["linux-binary-7.2.13+deb14-arm64"]);
        assert_eq!(deps[4], vec!["linux-modules-7.2.13+deb14-arm64"]);
        assert_eq!(st[1].depends(), vec![vec!["kmod"], vec!["linux-base"]]);
    }
}
