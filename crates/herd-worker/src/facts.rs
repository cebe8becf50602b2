//! Facts a worker reports about its machine without being told: os, arch,
//! distro, os_version, cpus, memory (GiB), hostname, herd version.

use std::collections::BTreeMap;

pub fn gather() -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    f.insert("os".into(), os_name().into());
    f.insert("arch".into(), std::env::consts::ARCH.into());
    f.insert("herd".into(), env!("CARGO_PKG_VERSION").into());
    if let Ok(n) = std::thread::available_parallelism() {
        f.insert("cpus".into(), n.get().to_string());
    }
    if let Some(gib) = memory_gib() {
        f.insert("memory".into(), gib);
    }
    if let Some(h) = hostname() {
        f.insert("hostname".into(), h);
    }
    if let Ok(text) = std::fs::read_to_string("/etc/os-release") {
        let release = parse_os_release(&text);
        if let Some(id) = release.get("ID") {
            f.insert("distro".into(), id.clone());
        }
        if let Some(v) = release.get("VERSION_ID") {
            f.insert("os_version".into(), v.clone());
        }
    }
    f
}

fn os_name() -> &'static str {
    match std::env::consts::OS {
        "macos" => "macos",
        other => other,
    }
}

fn memory_gib() -> Option<String> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: f64 = text
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(format!("{:.1}", kb / 1024.0 / 1024.0))
}

fn hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
}

fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_include_the_basics() {
        let f = gather();
        assert_eq!(f["os"], std::env::consts::OS);
        assert!(f["cpus"].parse::<u32>().unwrap() >= 1);
    }

    #[test]
    fn os_release_is_parsed() {
        let r = parse_os_release("ID=debian\nVERSION_ID=\"12\"\n");
        assert_eq!(r["ID"], "debian");
        assert_eq!(r["VERSION_ID"], "12");
    }
}
