//! `kiln build`'s options for every RUN step, checked before anything is sent: `--network`,
//! `--add-host`, `--shm-size`, `--ulimit` and `--allow`, with buildx's spellings.

use super::build::BuildArgs;
use anyhow::{anyhow, bail};
use kiln_shared::api::RunOptions;

/// The resource names `--ulimit` takes (Docker's list).
const ULIMITS: &[&str] = &[
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

pub fn parse(args: &BuildArgs) -> anyhow::Result<RunOptions> {
    let mut entitlements = Vec::new();
    for a in args.allow.iter().flat_map(|a| a.split(',')) {
        match a {
            "network.host" => entitlements.push(a.to_string()),
            "security.insecure" => bail!("--allow security.insecure: kiln's agents never run privileged steps"),
            other => bail!("--allow {other:?}: unknown entitlement (expected network.host or security.insecure)"),
        }
    }
    let network = match args.network.as_deref() {
        None => None,
        Some(n @ ("default" | "none")) => Some(n.to_string()),
        Some("host") => {
            // As buildx: asking for the host's network is asking for the entitlement.
            if !entitlements.iter().any(|e| e == "network.host") {
                entitlements.push("network.host".to_string());
            }
            Some("host".to_string())
        }
        Some(other) => bail!("--network {other:?}: expected default, none or host"),
    };
    Ok(RunOptions {
        network,
        hosts: args.add_hosts.iter().map(|h| add_host(h)).collect::<anyhow::Result<_>>()?,
        shm_bytes: args.shm_size.as_deref().map(bytes).transpose()?,
        ulimits: args.ulimits.iter().map(|u| ulimit(u)).collect::<anyhow::Result<_>>()?,
        entitlements,
    })
}

/// `HOST:IP` (or `HOST=IP`): the IP may be v6 (`db:::1`).
fn add_host(raw: &str) -> anyhow::Result<(String, String)> {
    let (host, ip) = raw.split_once('=').or_else(|| raw.split_once(':')).ok_or_else(|| anyhow!("--add-host {raw:?}: expected HOST:IP"))?;
    if host.is_empty() || host.contains(char::is_whitespace) {
        bail!("--add-host {raw:?}: the host name is empty or has spaces");
    }
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    if ip == "host-gateway" {
        bail!("--add-host {raw:?}: host-gateway is a Docker daemon's name; give the address");
    }
    ip.parse::<std::net::IpAddr>().map_err(|_| anyhow!("--add-host {raw:?}: {ip:?} is not an IP address"))?;
    Ok((host.to_string(), ip.to_string()))
}

/// A size as Docker takes it: a number with an optional b, k, m, g or t suffix (binary units).
pub fn bytes(raw: &str) -> anyhow::Result<u64> {
    let s = raw.trim().to_ascii_lowercase();
    let s = s.strip_suffix("ib").or_else(|| s.strip_suffix('b')).unwrap_or(&s);
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => bail!("{raw:?} is not a size (e.g. 64m, 1g)"),
    };
    let n: f64 = num.trim().parse().map_err(|_| anyhow!("{raw:?} is not a size (e.g. 64m, 1g)"))?;
    if !(n.is_finite() && n > 0.0) {
        bail!("{raw:?}: a size must be above 0");
    }
    Ok((n * (1u64 << shift) as f64) as u64)
}

/// `NAME=SOFT[:HARD]` (`-1` is unlimited).
fn ulimit(raw: &str) -> anyhow::Result<(String, u64, u64)> {
    let (name, values) = raw.split_once('=').ok_or_else(|| anyhow!("--ulimit {raw:?}: expected NAME=SOFT[:HARD]"))?;
    if !ULIMITS.contains(&name) {
        bail!("--ulimit {raw:?}: unknown resource {name:?} (one of {})", ULIMITS.join(", "));
    }
    let value = |v: &str| -> anyhow::Result<u64> {
        if v == "-1" {
            return Ok(u64::MAX);
        }
        v.parse().map_err(|_| anyhow!("--ulimit {raw:?}: {v:?} is not a number"))
    };
    let (soft, hard) = match values.split_once(':') {
        Some((s, h)) => (value(s)?, value(h)?),
        None => (value(values)?, value(values)?),
    };
    if soft > hard {
        bail!("--ulimit {raw:?}: the soft limit is above the hard limit");
    }
    Ok((name.to_string(), soft, hard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_hosts_and_limits_as_docker_spells_them() {
        assert_eq!(bytes("64m").unwrap(), 64 << 20);
        assert_eq!(bytes("1G").unwrap(), 1 << 30);
        assert_eq!(bytes("512kb").unwrap(), 512 << 10);
        assert_eq!(bytes("2MiB").unwrap(), 2 << 20);
        assert_eq!(bytes("4096").unwrap(), 4096);
        assert!(bytes("lots").is_err() && bytes("0").is_err() && bytes("1x").is_err());
        assert_eq!(add_host("db:10.0.0.2").unwrap(), ("db".into(), "10.0.0.2".into()));
        assert_eq!(add_host("v6:::1").unwrap(), ("v6".into(), "::1".into()));
        assert_eq!(add_host("a=1.2.3.4").unwrap(), ("a".into(), "1.2.3.4".into()));
        assert!(add_host("db").is_err() && add_host("db:nothing").is_err() && add_host(":1.2.3.4").is_err());
        assert_eq!(ulimit("nofile=1024:4096").unwrap(), ("nofile".into(), 1024, 4096));
        assert_eq!(ulimit("nproc=100").unwrap(), ("nproc".into(), 100, 100));
        assert_eq!(ulimit("core=-1").unwrap().2, u64::MAX);
        assert!(ulimit("files=1").is_err() && ulimit("nofile=2:1").is_err() && ulimit("nofile").is_err());
    }
}
