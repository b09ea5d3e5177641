//! Debian's kernel images, without installing them: a private apt configuration (its own
//! sources, lists and cache under the cache directory, the host's /etc/apt untouched) finds
//! the newest package of each series, `apt-get download` fetches it and `dpkg-deb -x` gives
//! its vmlinuz and config, which stay cached per package version.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};

use super::debversion;

/// The suites searched for kernels: bookworm has 6.1, trixie 6.12, trixie-backports and sid
/// the newer ones, experimental release candidates. `true` = served by the security mirror.
const SUITES: &[(&str, bool)] = &[
    ("bookworm", false),
    ("bookworm-updates", false),
    ("bookworm-security", true),
    ("trixie", false),
    ("trixie-updates", false),
    ("trixie-security", true),
    ("trixie-backports", false),
    ("sid", false),
    ("experimental", false),
];

/// Debian's archive keys (package debian-archive-keyring): the lists are verified with them.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Package lists younger than this are reused as they are.
const LISTS_MAX_AGE: Duration = Duration::from_secs(12 * 3600);

/// Kernel options the VM and the tests need built in (nothing is loaded as a module: the
/// initramfs has no modules).
const REQUIRED_OPTIONS: &[&str] = &[
    "CONFIG_BLK_DEV_INITRD",
    "CONFIG_DEVTMPFS",
    "CONFIG_TMPFS",
    "CONFIG_PROC_FS",
    "CONFIG_SYSFS",
    "CONFIG_SERIAL_8250_CONSOLE",
    "CONFIG_UNIX",
    "CONFIG_INET",
    "CONFIG_CGROUPS",
    "CONFIG_MEMCG",
    "CONFIG_BPF_SYSCALL",
    "CONFIG_BPF_EVENTS",
    "CONFIG_TRACEPOINTS",
    "CONFIG_DEBUG_INFO_BTF",
];

/// One version of a package, from `apt-cache show`.
#[derive(Debug, Clone, PartialEq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub description: String,
    pub depends: String,
}

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct KernelFiles {
    pub vmlinuz: PathBuf,
    pub config: PathBuf,
}

/// The private apt configuration.
pub struct Archive {
    dir: PathBuf,
}

impl Archive {
    /// Writes the sources (the host's Debian mirror, every suite in [`SUITES`]) under
    /// `cache/apt`.
    pub fn open(cache: &Path) -> anyhow::Result<Self> {
        if !Path::new(KEYRING).exists() {
            bail!(
                "{KEYRING} is missing: install debian-archive-keyring (apt-get install debian-archive-keyring)"
            );
        }
        let dir = cache.join("apt");
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let (main, security) = mirrors(&host_sources());
        let sources = sources_list(&main, &security);
        let path = dir.join("sources.list");
        if std::fs::read_to_string(&path).ok().as_deref() != Some(sources.as_str()) {
            std::fs::write(&path, sources)
                .with_context(|| format!("writing {}", path.display()))?;
            // New sources: the old lists do not describe them.
            let _ = std::fs::remove_file(dir.join("updated"));
        }
        Ok(Self { dir })
    }

    /// apt-get or apt-cache with the private configuration.
    fn apt(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        let dir = &self.dir;
        for (key, value) in [
            ("Dir::Etc::SourceList", dir.join("sources.list")),
            ("Dir::Etc::SourceParts", "/dev/null".into()),
            ("Dir::Etc::Preferences", "/dev/null".into()),
            ("Dir::Etc::PreferencesParts", "/dev/null".into()),
            ("Dir::State::Lists", dir.join("lists")),
            ("Dir::State::status", "/dev/null".into()),
            ("Dir::Cache", dir.join("cache")),
        ] {
            cmd.arg("-o").arg(format!("{key}={}", value.display()));
        }
        for (key, value) in [
            ("APT::Architecture", "amd64"),
            ("APT::Architectures::", "amd64"),
            ("Acquire::Languages", "none"),
            // The host's appstream hook would fetch DEP-11 metadata nobody reads here.
            (
                "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled",
                "false",
            ),
            ("APT::Sandbox::User", "root"),
        ] {
            cmd.arg("-o").arg(format!("{key}={value}"));
        }
        cmd
    }

    /// `apt-get update`, unless the lists are recent. When it fails and older lists exist,
    /// those are used (with a warning).
    pub fn update(&self) -> anyhow::Result<()> {
        let stamp = self.dir.join("updated");
        let age = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        if age.is_some_and(|age| age < LISTS_MAX_AGE) {
            return Ok(());
        }
        eprintln!(
            "xtask vm: updating the package lists (Debian mirror, private apt configuration)"
        );
        let out = self
            .apt("apt-get")
            .args(["update", "-qq"])
            .output()
            .context("running apt-get update")?;
        if out.status.success() {
            std::fs::write(&stamp, "").with_context(|| format!("writing {}", stamp.display()))?;
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let have_lists = std::fs::read_dir(self.dir.join("lists"))
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"))
            })
            .unwrap_or(false);
        if !have_lists {
            bail!(
                "apt-get update of the kernel package lists failed: {err}\nIs the Debian mirror reachable?"
            );
        }
        eprintln!("xtask vm: warning: apt-get update failed, using the previous lists: {err}");
        Ok(())
    }

    /// Every version of every `linux-image-<version>-amd64`-like package in the lists.
    pub fn kernel_packages(&self) -> anyhow::Result<Vec<Package>> {
        let names = output(self.apt("apt-cache").args([
            "search",
            "--names-only",
            "^linux-image-[0-9].*-amd64$",
        ]))?;
        let names: Vec<&str> = names
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let records = output(self.apt("apt-cache").arg("show").args(&names))?;
        Ok(parse_records(&records))
    }

    /// The kernel of a package, from the cache or downloaded and extracted into it.
    pub fn fetch(&self, cache: &Path, package: &Package) -> anyhow::Result<KernelFiles> {
        let key = format!("{}_{}", package.name, package.version).replace([':', '/'], "_");
        let dir = cache.join("kernels").join(key);
        let files = KernelFiles {
            vmlinuz: dir.join("vmlinuz"),
            config: dir.join("config"),
        };
        if files.vmlinuz.exists() && files.config.exists() {
            return Ok(files);
        }
        let work = cache.join(format!("download-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(work.join("root"))?;
        let result = self.download_and_extract(package, &work, &dir);
        let _ = std::fs::remove_dir_all(&work);
        result
            .with_context(|| format!("fetching the kernel {} {}", package.name, package.version))?;
        Ok(files)
    }

    fn download_and_extract(
        &self,
        package: &Package,
        work: &Path,
        dir: &Path,
    ) -> anyhow::Result<()> {
        let wanted = packages_to_download(package);
        eprintln!("xtask vm: downloading {}", wanted.join(" "));
        let status = self
            .apt("apt-get")
            .args(["download", "-qq"])
            .args(&wanted)
            .current_dir(work)
            .status()
            .context("running apt-get download")?;
        if !status.success() {
            bail!("apt-get download {} failed ({status})", wanted.join(" "));
        }
        let root = work.join("root");
        for deb in std::fs::read_dir(work)?.flatten().map(|e| e.path()) {
            if deb.extension().is_some_and(|e| e == "deb") {
                let status = Command::new("dpkg-deb")
                    .arg("-x")
                    .arg(&deb)
                    .arg(&root)
                    .status()
                    .context("running dpkg-deb")?;
                if !status.success() {
                    bail!("dpkg-deb -x {} failed ({status})", deb.display());
                }
            }
        }
        let vmlinuz = find_kernel_file(&root, "vmlinuz")?;
        let config = find_kernel_file(&root, "config")?;
        let text = std::fs::read_to_string(&config)?;
        let missing = missing_options(&text);
        if !missing.is_empty() {
            bail!(
                "{} lacks {} built in: the VM loads no modules; choose another flavour",
                package.name,
                missing.join(", ")
            );
        }
        // Complete or absent: built next to the final directory, then renamed.
        let mut partial = dir.as_os_str().to_owned();
        partial.push(format!(".partial-{}", std::process::id()));
        let partial = PathBuf::from(partial);
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)?;
        std::fs::copy(&vmlinuz, partial.join("vmlinuz"))?;
        std::fs::copy(&config, partial.join("config"))?;
        if let Err(e) = std::fs::rename(&partial, dir) {
            let _ = std::fs::remove_dir_all(&partial);
            // Another run cached the same kernel meanwhile: use that one.
            if !dir.join("vmlinuz").exists() {
                return Err(e).with_context(|| format!("renaming to {}", dir.display()));
            }
        }
        Ok(())
    }
}

/// The cache directory (KMEMCG_VM_CACHE, else /var/cache/kmemcg-vm).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("KMEMCG_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/kmemcg-vm"))
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The host's apt sources, one-line and deb822, concatenated.
fn host_sources() -> String {
    let mut text = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            if path
                .extension()
                .is_some_and(|e| e == "list" || e == "sources")
            {
                text.push('\n');
                text.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    text
}

/// The Debian mirror and security mirror the host uses (deb.debian.org when it uses none).
fn mirrors(sources: &str) -> (String, String) {
    let uris = sources.lines().filter_map(|line| {
        let line = line.trim();
        if let Some(uris) = line.strip_prefix("URIs:") {
            return uris.split_whitespace().next();
        }
        let rest = line.strip_prefix("deb ")?.trim_start();
        // Skip the options, e.g. `[signed-by=...]`.
        let rest = match rest.strip_prefix('[') {
            Some(r) => r.split_once(']')?.1,
            None => rest,
        };
        rest.split_whitespace().next()
    });
    let (mut main, mut security) = (None, None);
    for uri in uris {
        let uri = uri.trim_end_matches('/');
        if uri.ends_with("/debian-security") {
            security.get_or_insert_with(|| uri.to_string());
        } else if uri.ends_with("/debian") {
            main.get_or_insert_with(|| uri.to_string());
        }
    }
    let main = main.unwrap_or_else(|| "http://deb.debian.org/debian".into());
    let security = security.unwrap_or_else(|| format!("{main}-security"));
    (main, security)
}

fn sources_list(main: &str, security: &str) -> String {
    SUITES
        .iter()
        .map(|(suite, is_security)| {
            let uri = if *is_security { security } else { main };
            format!("deb [signed-by={KEYRING}] {uri} {suite} main\n")
        })
        .collect()
}

/// Records of `apt-cache show` output.
fn parse_records(text: &str) -> Vec<Package> {
    text.split("\n\n")
        .filter_map(|record| {
            let field = |name: &str| {
                record.lines().find_map(|l| {
                    l.strip_prefix(name)
                        .and_then(|r| r.strip_prefix(':'))
                        .map(|v| v.trim().to_string())
                })
            };
            Some(Package {
                name: field("Package")?,
                version: field("Version")?,
                description: field("Description").unwrap_or_default(),
                depends: field("Depends").unwrap_or_default(),
            })
        })
        .collect()
}

/// The newest kernel image of a series ("6.12" takes 6.12.x, "7" takes 7.x): the plain
/// amd64 flavour (not cloud or rt), no meta-package, a release rather than a release
/// candidate when the series has one.
pub fn newest<'a>(packages: &'a [Package], series: &str) -> Option<&'a Package> {
    packages
        .iter()
        .filter(|p| is_plain_image(&p.name) && !p.description.contains("meta-package"))
        .filter(|p| {
            debversion::upstream(&p.version)
                .strip_prefix(series)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '~']))
        })
        .max_by(|a, b| {
            let release = |p: &Package| !debversion::upstream(&p.version).contains("~rc");
            release(a)
                .cmp(&release(b))
                .then_with(|| debversion::compare(&a.version, &b.version))
        })
}

/// `linux-image-6.1.0-57-amd64`, `linux-image-6.12.117+deb13-amd64`: not `-cloud-amd64`,
/// `-rt-amd64`, `-amd64-dbg` or `-amd64-unsigned`.
fn is_plain_image(name: &str) -> bool {
    name.strip_prefix("linux-image-")
        .and_then(|n| n.strip_suffix("-amd64"))
        .is_some_and(|abi| {
            abi.starts_with(|c: char| c.is_ascii_digit())
                && !abi.ends_with("-cloud")
                && !abi.ends_with("-rt")
        })
}

/// The image package, and where it is split (7.x: the kernel in linux-binary-*, the config
/// in linux-base-*) those parts, each at its exact version. Unsplit images (6.x) may name
/// a linux-base-* the archive no longer has: it is not fetched for them.
fn packages_to_download(package: &Package) -> Vec<String> {
    let mut wanted = vec![format!("{}={}", package.name, package.version)];
    if !package.depends.contains("linux-binary-") {
        return wanted;
    }
    for dependency in package.depends.split([',', '|']) {
        let mut words = dependency.split_whitespace();
        let Some(name) = words.next() else { continue };
        if !(name.starts_with("linux-binary-") || name.starts_with("linux-base-")) {
            continue;
        }
        let rest: String = words.collect();
        match rest.strip_prefix("(=").and_then(|r| r.strip_suffix(')')) {
            Some(version) => wanted.push(format!("{name}={version}")),
            None => wanted.push(name.to_string()),
        }
    }
    wanted
}

/// `boot/<name>-<release>` (up to 6.x) or `usr/lib/modules/<release>/<name>` (7.x).
fn find_kernel_file(root: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let boot = std::fs::read_dir(root.join("boot"))
        .into_iter()
        .flatten()
        .flatten();
    let modules = std::fs::read_dir(root.join("usr/lib/modules"))
        .into_iter()
        .flatten()
        .flatten();
    boot.map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}-")))
        })
        .or_else(|| modules.map(|e| e.path().join(name)).find(|p| p.is_file()))
        .with_context(|| {
            format!("no {name} in the kernel packages (looked in boot/ and usr/lib/modules/*/)")
        })
}

/// The options of [`REQUIRED_OPTIONS`] a kernel config does not build in (`=y`).
fn missing_options(config: &str) -> Vec<&'static str> {
    REQUIRED_OPTIONS
        .iter()
        .copied()
        .filter(|option| !config.lines().any(|l| l == format!("{option}=y")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(name: &str, version: &str) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            description: format!("Linux {version} for 64-bit PCs"),
            depends: String::new(),
        }
    }

    #[test]
    fn picks_the_newest_plain_image_of_a_series() {
        let mut meta = package("linux-image-6.12-amd64", "6.12.200-1~deb12u1");
        meta.description = "Linux for 64-bit PCs (meta-package)".into();
        let packages = [
            package("linux-image-6.1.0-56-amd64", "6.1.192-2"),
            package("linux-image-6.1.0-57-amd64", "6.1.192-3"),
            package("linux-image-6.1.0-9-amd64", "6.1.27-1"),
            package("linux-image-6.12.9+deb13-amd64", "6.12.9-1"),
            package("linux-image-6.12.117+deb12-amd64", "6.12.117-1~deb12u1"),
            package("linux-image-6.12.117+deb13-amd64", "6.12.117-1"),
            package("linux-image-6.12.118+deb13-cloud-amd64", "6.12.118-1"),
            package("linux-image-6.12.119+deb13-rt-amd64", "6.12.119-1"),
            meta,
            package("linux-image-6.18.15+deb13-amd64", "6.18.15-1~bpo13+1"),
            package("linux-image-6.18.5+deb13-amd64", "6.18.5-1~bpo13+1"),
            package("linux-image-7.2.13+deb14-amd64", "7.2.13-1"),
            package("linux-image-7.3.4+deb13-amd64", "7.3.4-1~bpo13+1"),
            package("linux-image-7.4-amd64", "7.4~rc2-1~exp1"),
            package("linux-image-8.0-amd64", "8.0~rc1-1~exp1"),
        ];
        let pick = |series| newest(&packages, series).map(|p| p.name.as_str());
        assert_eq!(pick("6.1"), Some("linux-image-6.1.0-57-amd64"));
        assert_eq!(pick("6.12"), Some("linux-image-6.12.117+deb13-amd64"));
        assert_eq!(pick("6.18"), Some("linux-image-6.18.15+deb13-amd64"));
        // A release before a newer release candidate; a candidate when there is nothing else.
        assert_eq!(pick("7"), Some("linux-image-7.3.4+deb13-amd64"));
        assert_eq!(pick("8"), Some("linux-image-8.0-amd64"));
        assert_eq!(pick("6.19"), None);
    }

    #[test]
    fn reads_apt_cache_records_and_split_packages() {
        let text = "Package: linux-image-7.3.4+deb13-amd64\nSource: linux-signed-amd64\n\
                    Version: 7.3.4-1~bpo13+1\nInstalled-Size: 15\n\
                    Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, \
                    linux-base-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), \
                    linux-binary-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), \
                    linux-modules-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1)\n\
                    Description: Linux 7.3.4 for 64-bit PCs\n\n\
                    Package: linux-image-6.18.15+deb13-amd64\nVersion: 6.18.15-1~bpo13+1\n\
                    Depends: kmod, linux-base-6.18.15+deb13-amd64 (= 6.18.15-1~bpo13+1)\n\
                    Description: Linux 6.1 for 64-bit PCs (signed)\n";
        let records = parse_records(text);
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].name, "linux-image-6.18.15+deb13-amd64");
        assert_eq!(records[1].version, "6.18.15-1~bpo13+1");
        assert_eq!(
            packages_to_download(&records[0]),
            [
                "linux-image-7.3.4+deb13-amd64=7.3.4-1~bpo13+1",
                "linux-base-7.3.4+deb13-amd64=7.3.4-1~bpo13+1",
                "linux-binary-7.3.4+deb13-amd64=7.3.4-1~bpo13+1",
            ]
        );
        assert_eq!(
            packages_to_download(&records[1]),
            ["linux-image-6.18.15+deb13-amd64=6.18.15-1~bpo13+1"]
        );
    }

    #[test]
    fn takes_the_hosts_mirrors() {
        let deb822 = "Types: deb\n# http://snapshot.debian.org/archive/debian/2025\n\
                      URIs: http://mirror.example/debian/\nSuites: bookworm\n\n\
                      Types: deb\nURIs: http://mirror.example/debian-security\n\
                      Suites: bookworm-security\n";
        assert_eq!(
            mirrors(deb822),
            (
                "http://mirror.example/debian".into(),
                "http://mirror.example/debian-security".into()
            )
        );
        let one_line = "deb https://packages.cloud.google.com/apt cloud-sdk main\n\
                        deb [arch=amd64 signed-by=/k.gpg] http://ftp.example/debian bookworm main\n";
        assert_eq!(
            mirrors(one_line),
            (
                "http://ftp.example/debian".into(),
                "http://ftp.example/debian-security".into()
            )
        );
        assert_eq!(mirrors("").0, "http://deb.debian.org/debian");
        assert!(
            sources_list("http://m/debian", "http://m/debian-security")
                .contains("http://m/debian-security bookworm-security main\n")
        );
    }

    #[test]
    fn checks_the_built_in_options() {
        let all: String = REQUIRED_OPTIONS
            .iter()
            .map(|o| format!("{o}=y\n"))
            .collect();
        assert!(missing_options(&all).is_empty());
        let modular = all.replace("CONFIG_MEMCG=y", "CONFIG_MEMCG=m");
        assert_eq!(missing_options(&modular), ["CONFIG_MEMCG"]);
        let unset = all.replace("CONFIG_TMPFS=y\n", "# CONFIG_TMPFS is not set\n");
        assert_eq!(missing_options(&unset), ["CONFIG_TMPFS"]);
    }
}
