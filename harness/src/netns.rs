//! Hosts in network namespaces, joined by a bridge, with links that can be cut and healed.
//!
//! Layout for `n` hosts, all made by [`Net::create`] and removed when the [`Net`] is dropped:
//! - a hub namespace holding a bridge;
//! - one namespace per host, its `eth0` on the bridge with address `10.231.S.k` (`k` from 1);
//! - one veth from the caller's namespace onto the bridge, address `10.231.S.100`, so the
//!   process that made the net (the clients of a test) reaches every host while links between
//!   hosts are cut.
//!
//! A cut is a pair of blackhole routes, one in each host: packets between the two are dropped
//! silently, as on a real partition, while both stay reachable from the caller. Namespaces are
//! named after the creating process, so ones left behind by a process that was killed are found
//! and removed by the next [`Net::create`].

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

const PREFIX: &str = "rlharness";

/// Why network namespaces cannot be used here, if they cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespaces need root".into());
    }
    match Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => None,
        _ => Some("iproute2's `ip` is not installed".into()),
    }
}

/// Runs `ip ARGS`, failing with its error output.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Namespaces of this harness whose creating process is gone.
fn leftovers() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return vec![];
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| {
            let pid = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        })
        .map(str::to_string)
        .collect()
}

/// `n` hosts in their own network namespaces (see the module docs).
pub struct Net {
    hub: String,
    hosts: Vec<String>,
    subnet: String,
    cuts: BTreeSet<(usize, usize)>,
}

impl Net {
    /// Creates the hub, `n` hosts and the caller's link onto the bridge.
    pub fn create(n: usize) -> anyhow::Result<Net> {
        if let Some(why) = unavailable() {
            bail!("{why}");
        }
        for old in leftovers() {
            let _ = ip(&["netns", "del", &old]);
        }
        let pid = std::process::id();
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{PREFIX}{pid}-{seq}");
        // A /24 of its own per net of this process, unlikely to meet another run's.
        let subnet = format!("10.231.{}", (pid as usize * 7 + seq as usize) % 250);
        let mut net = Net {
            hub: format!("{tag}-hub"),
            hosts: (1..=n).map(|k| format!("{tag}-h{k}")).collect(),
            subnet,
            cuts: BTreeSet::new(),
        };
        // From here on, Drop removes whatever was made, also when building fails.
        net.build(&tag)?;
        Ok(net)
    }

    fn build(&mut self, tag: &str) -> anyhow::Result<()> {
        let hub = self.hub.clone();
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for (i, host) in self.hosts.iter().enumerate() {
            let k = i + 1;
            let port = format!("h{k}");
            ip(&["netns", "add", host])?;
            // Made inside the two namespaces, so the names need only be unique there.
            ip(&[
                "link", "add", "name", "eth0", "netns", host, "type", "veth", "peer", "name", &port, "netns", &hub,
            ])?;
            ip(&[
                "-n",
                host,
                "addr",
                "add",
                &format!("{}/24", self.host_ip(k)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", host, "link", "set", "eth0", "up"])?;
            ip(&["-n", host, "link", "set", "lo", "up"])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &hub, "link", "set", &port, "up"])?;
        }
        // The caller's end: named in the caller's namespace, so it must be unique there.
        let client = client_link(tag);
        ip(&[
            "link", "add", "name", &client, "type", "veth", "peer", "name", "caller", "netns", &hub,
        ])?;
        ip(&["addr", "add", &format!("{}.100/24", self.subnet), "dev", &client])?;
        ip(&["link", "set", &client, "up"])?;
        ip(&["-n", &hub, "link", "set", "caller", "master", "br0"])?;
        ip(&["-n", &hub, "link", "set", "caller", "up"])?;
        Ok(())
    }

    /// Host `k`'s address (`k` from 1).
    pub fn host_ip(&self, k: usize) -> String {
        format!("{}.{k}", self.subnet)
    }

    /// A command that runs `program` inside host `k`.
    pub fn command(&self, k: usize, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[k - 1]]).arg(program);
        c
    }

    /// Adds (`add`) or removes (`del`) the blackhole routes between hosts `a` and `b`, one in
    /// each.
    fn blackholes(&self, action: &str, a: usize, b: usize) -> anyhow::Result<()> {
        for (here, there) in [(a, b), (b, a)] {
            let to = format!("{}/32", self.host_ip(there));
            ip(&["-n", &self.hosts[here - 1], "route", action, "blackhole", &to])?;
        }
        Ok(())
    }

    /// Drops every packet between hosts `a` and `b`, both ways.
    pub fn cut(&mut self, a: usize, b: usize) -> anyhow::Result<()> {
        let (a, b) = (a.min(b), a.max(b));
        if self.cuts.insert((a, b)) {
            self.blackholes("add", a, b)?;
        }
        Ok(())
    }

    /// Cuts host `k` off from every other host.
    pub fn isolate(&mut self, k: usize) -> anyhow::Result<()> {
        for other in 1..=self.hosts.len() {
            if other != k {
                self.cut(k, other)?;
            }
        }
        Ok(())
    }

    /// Restores every cut link.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        for (a, b) in std::mem::take(&mut self.cuts) {
            self.blackholes("del", a, b)?;
        }
        Ok(())
    }

    /// The links cut now, as host pairs.
    pub fn cuts(&self) -> &BTreeSet<(usize, usize)> {
        &self.cuts
    }

    fn remove(&self) {
        // Removing the hub removes the bridge and every veth with an end in it, the caller's
        // link included. Processes still inside a host keep its namespace alive until they end.
        for ns in std::iter::once(&self.hub).chain(&self.hosts) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// The caller's veth name: at most 15 bytes, unique per net of this process.
fn client_link(tag: &str) -> String {
    let rest = tag.trim_start_matches(PREFIX);
    let mut name = format!("rlh{rest}");
    name.truncate(15);
    name
}

impl Drop for Net {
    fn drop(&mut self) {
        self.remove();
    }
}
