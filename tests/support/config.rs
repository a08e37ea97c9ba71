//! Config text for tests, built from named parts: upstream groups, tenants with their
//! own limits, `[edge]`, and any other table's keys, so that a test says which limit it
//! sets where (no limit rides along inside another key's text).
//!
//! ```ignore
//! let proxy = config()
//!     .upstream(&edge.url(false))
//!     .tenant(tenant("lab").max_sessions(1).queue_timeout(Duration::from_secs(60)))
//!     .edge_limits(EdgeLimits::rate(20.0, 1))
//!     .set("protection", "idle_timeout", "\"300ms\"")
//!     .start()
//!     .await;
//! ```
//!
//! `[listen] address` and `[admin] address` are `127.0.0.1:0` unless set.

use std::time::Duration;

use super::{proxy, Proxy, Serving};

/// One `key = value` line; the value is TOML text.
type Line = (String, String);

/// Sets `key` in `lines` (replacing an earlier value of it).
fn put(lines: &mut Vec<Line>, key: &str, value: String) {
    match lines.iter_mut().find(|(k, _)| k == key) {
        Some(line) => line.1 = value,
        None => lines.push((key.to_owned(), value)),
    }
}

/// A TOML basic string.
pub fn quoted(text: &str) -> String {
    format!("{text:?}")
}

/// A duration as config text (`"250ms"`).
pub fn duration(d: Duration) -> String {
    quoted(&humantime::format_duration(d).to_string())
}

/// A tenant: its auth (none unless set) and its own limits.
#[derive(Debug, Clone)]
pub struct TenantSpec {
    name: String,
    lines: Vec<Line>,
}

/// A tenant called `name` that needs no credential, with the `[defaults]` limits.
pub fn tenant(name: &str) -> TenantSpec {
    TenantSpec {
        name: name.to_owned(),
        lines: vec![("auth".to_owned(), super::NO_AUTH.to_owned())],
    }
}

impl TenantSpec {
    /// `auth`, as an inline table (e.g. `{ kind = "api-key", key_sha256 = ["…"] }`).
    pub fn auth(self, inline_table: &str) -> Self {
        self.key("auth", inline_table)
    }

    /// `max_sessions`.
    pub fn max_sessions(self, n: u32) -> Self {
        self.key("max_sessions", &n.to_string())
    }

    /// `handshake_rate` (per second).
    pub fn handshake_rate(self, per_second: f64) -> Self {
        self.key("handshake_rate", &format!("{per_second:?}"))
    }

    /// `handshake_burst`.
    pub fn handshake_burst(self, n: u32) -> Self {
        self.key("handshake_burst", &n.to_string())
    }

    /// `handshake_rate` and `handshake_burst` so high that pacing never binds.
    pub fn unpaced(self) -> Self {
        self.handshake_rate(10_000.0).handshake_burst(1000)
    }

    /// `queue_depth`.
    pub fn queue_depth(self, n: u32) -> Self {
        self.key("queue_depth", &n.to_string())
    }

    /// `queue_timeout`.
    pub fn queue_timeout(self, d: Duration) -> Self {
        self.key("queue_timeout", &duration(d))
    }

    /// `queue_mode = "accept"`.
    pub fn accept_mode(self) -> Self {
        self.key("queue_mode", &quoted("accept"))
    }

    /// `subprotocols`.
    pub fn subprotocols(self, list: &[&str]) -> Self {
        let items: Vec<String> = list.iter().map(|p| quoted(p)).collect();
        self.key("subprotocols", &format!("[{}]", items.join(", ")))
    }

    /// `weight` (its share at the edge arbiter).
    pub fn weight(self, w: u32) -> Self {
        self.key("weight", &w.to_string())
    }

    /// `upstream_group`.
    pub fn group(self, name: &str) -> Self {
        self.key("upstream_group", &quoted(name))
    }

    /// Any other key of `[tenants.NAME]`, its value as TOML text.
    pub fn key(mut self, key: &str, toml_value: &str) -> Self {
        put(&mut self.lines, key, toml_value.to_owned());
        self
    }
}

/// `[edge]`: the limits of the contact-center edge all tenants share.
#[derive(Debug, Clone, Copy, Default)]
pub struct EdgeLimits {
    /// `max_sessions`.
    pub max_sessions: Option<u32>,
    /// `handshake_rate`.
    pub handshake_rate: Option<f64>,
    /// `handshake_burst`.
    pub handshake_burst: Option<u32>,
}

impl EdgeLimits {
    /// Only a handshake rate and burst.
    pub fn rate(per_second: f64, burst: u32) -> Self {
        Self {
            handshake_rate: Some(per_second),
            handshake_burst: Some(burst),
            ..Self::default()
        }
    }
}

/// Config text under construction.
#[derive(Debug, Clone, Default)]
pub struct ConfigBuilder {
    /// Top-level tables other than groups and tenants, in order of first use.
    tables: Vec<(String, Vec<Line>)>,
    groups: Vec<(String, Vec<String>)>,
    tenants: Vec<TenantSpec>,
}

/// An empty config: add groups and tenants.
pub fn config() -> ConfigBuilder {
    ConfigBuilder::default()
}

impl ConfigBuilder {
    /// The upstream group `primary` (every tenant's default) with one endpoint.
    pub fn upstream(self, url: &str) -> Self {
        self.group("primary", &[url])
    }

    /// An upstream group and its endpoints (replacing one of the same name).
    pub fn group(mut self, name: &str, endpoints: &[&str]) -> Self {
        let endpoints = endpoints.iter().map(|e| (*e).to_owned()).collect();
        match self.groups.iter_mut().find(|(n, _)| n == name) {
            Some(group) => group.1 = endpoints,
            None => self.groups.push((name.to_owned(), endpoints)),
        }
        self
    }

    /// A tenant (replacing one of the same name).
    pub fn tenant(mut self, spec: TenantSpec) -> Self {
        self.tenants.retain(|t| t.name != spec.name);
        self.tenants.push(spec);
        self
    }

    /// `[edge]`.
    pub fn edge_limits(mut self, edge: EdgeLimits) -> Self {
        if let Some(n) = edge.max_sessions {
            self = self.set("edge", "max_sessions", &n.to_string());
        }
        if let Some(r) = edge.handshake_rate {
            self = self.set("edge", "handshake_rate", &format!("{r:?}"));
        }
        if let Some(b) = edge.handshake_burst {
            self = self.set("edge", "handshake_burst", &b.to_string());
        }
        self
    }

    /// `[shutdown] drain_timeout`.
    pub fn drain_timeout(self, d: Duration) -> Self {
        self.set("shutdown", "drain_timeout", &duration(d))
    }

    /// `key = toml_value` in top-level table `table` (`"protection"`, `"listen"`,
    /// `"upstream"`, …), replacing an earlier value of it.
    pub fn set(mut self, table: &str, key: &str, toml_value: &str) -> Self {
        let at = match self.tables.iter().position(|(t, _)| t == table) {
            Some(at) => at,
            None => {
                self.tables.push((table.to_owned(), Vec::new()));
                self.tables.len() - 1
            }
        };
        put(&mut self.tables[at].1, key, toml_value.to_owned());
        self
    }

    /// The config text.
    pub fn text(&self) -> String {
        let mut tables = self.tables.clone();
        for table in ["listen", "admin"] {
            let lines = match tables.iter_mut().find(|(t, _)| t == table) {
                Some((_, lines)) => lines,
                None => {
                    tables.push((table.to_owned(), Vec::new()));
                    &mut tables.last_mut().expect("just pushed").1
                }
            };
            if !lines.iter().any(|(k, _)| k == "address") {
                lines.insert(0, ("address".to_owned(), quoted("127.0.0.1:0")));
            }
        }
        let mut text = String::new();
        let mut section = |header: String, lines: &[Line]| {
            text.push_str(&header);
            text.push('\n');
            for (k, v) in lines {
                text.push_str(&format!("{k} = {v}\n"));
            }
        };
        // `[upstream]`'s own keys come before its groups' tables.
        for (table, lines) in &tables {
            section(format!("[{table}]"), lines);
        }
        for (name, endpoints) in &self.groups {
            let list: Vec<String> = endpoints.iter().map(|e| quoted(e)).collect();
            section(
                format!("[upstream.groups.{name}]"),
                &[("endpoints".to_owned(), format!("[{}]", list.join(", ")))],
            );
        }
        for t in &self.tenants {
            section(format!("[tenants.{}]", t.name), &t.lines);
        }
        text
    }

    /// Starts sluice in-process on this config (see [`proxy`](super::proxy)).
    pub async fn start(&self) -> Proxy {
        proxy(&self.text()).await
    }

    /// Starts sluice in-process with a shutdown the test controls (see [`Serving`]).
    pub async fn serve(&self) -> Serving {
        super::serve(&self.text()).await
    }
}

/// Writes a config file for `sluice run` / reload tests: the edge's group as
/// `primary`, `[listen]` and `[admin]` on port 0, then `rest`.
pub fn write_config_file(path: &std::path::Path, edge: &super::Edge, rest: &str) {
    std::fs::write(
        path,
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
             [upstream.groups.primary]\nendpoints = [\"{}\"]\n{rest}",
            edge.url(false)
        ),
    )
    .unwrap();
}
