//! Beside the flow (DESIGN.md, "Configuration"): validating `[upstream]` and its endpoints.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::super::file;
use super::super::{
    Endpoint, Group, Upstream, DEFAULT_ADAPTIVE_FACTOR, DEFAULT_ADAPTIVE_FLOOR,
    DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX, DEFAULT_GROUP, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_PAUSE, DEFAULT_RETRY_BUDGET, DEFAULT_SLOW_HANDSHAKE, MAX_MAX_PAUSE,
};
use super::{list_names, Validator};

// === impl Validator ===

impl Validator {
    pub(super) fn upstream(&mut self, file: file::UpstreamFile) -> Upstream {
        let default_group = file
            .default_group
            .unwrap_or_else(|| DEFAULT_GROUP.to_owned());
        let mut groups = BTreeMap::new();
        for (name, group) in file.groups {
            let key = format!("upstream.groups.{name}.endpoints");
            if group.endpoints.is_empty() {
                self.fail(&key, "must list at least one ws:// or wss:// endpoint");
            }
            let mut endpoints = Vec::new();
            for (i, url) in group.endpoints.iter().enumerate() {
                match parse_endpoint(url) {
                    Ok(e) => {
                        if endpoints.contains(&e) {
                            self.fail(&format!("{key}[{i}]"), format!("{url:?} is listed twice"));
                        }
                        endpoints.push(e);
                    }
                    Err(reason) => self.fail(&format!("{key}[{i}]"), reason),
                }
            }
            groups.insert(name.clone(), Arc::new(Group { name, endpoints }));
        }
        if !groups.contains_key(&default_group) {
            self.fail(
                "upstream.default_group",
                format!(
                    "group {default_group:?} is not defined; add [upstream.groups.{default_group}] with endpoints = [\"ws://host:port\"] (defined: {})",
                    list_names(groups.keys())
                ),
            );
        }
        let handshake_timeout = self.positive_duration(
            "upstream.handshake_timeout",
            file.handshake_timeout,
            DEFAULT_HANDSHAKE_TIMEOUT,
        );
        let retry_budget = self.positive_duration(
            "upstream.retry_budget",
            file.retry_budget,
            DEFAULT_RETRY_BUDGET,
        );
        if retry_budget < handshake_timeout {
            self.fail(
                "upstream.retry_budget",
                format!(
                    "{} is shorter than upstream.handshake_timeout ({}): not even one attempt would fit",
                    humantime::format_duration(retry_budget),
                    humantime::format_duration(handshake_timeout)
                ),
            );
        }
        let backoff_base = self.positive_duration(
            "upstream.backoff_base",
            file.backoff_base,
            DEFAULT_BACKOFF_BASE,
        );
        let backoff_max = self.positive_duration(
            "upstream.backoff_max",
            file.backoff_max,
            DEFAULT_BACKOFF_MAX,
        );
        if backoff_max < backoff_base {
            self.fail(
                "upstream.backoff_max",
                "must not be less than upstream.backoff_base",
            );
        }
        let max_pause =
            self.positive_duration("upstream.max_pause", file.max_pause, DEFAULT_MAX_PAUSE);
        if max_pause > MAX_MAX_PAUSE {
            self.fail(
                "upstream.max_pause",
                format!(
                    "{} is longer than {}: an edge Retry-After would pause tenants for that long",
                    humantime::format_duration(max_pause),
                    humantime::format_duration(MAX_MAX_PAUSE)
                ),
            );
        }
        let slow_handshake = self.positive_duration(
            "upstream.slow_handshake",
            file.slow_handshake,
            DEFAULT_SLOW_HANDSHAKE,
        );
        let adaptive_factor = self.fraction(
            "upstream.adaptive_factor",
            file.adaptive_factor,
            DEFAULT_ADAPTIVE_FACTOR,
            false,
        );
        let adaptive_floor = self.fraction(
            "upstream.adaptive_floor",
            file.adaptive_floor,
            DEFAULT_ADAPTIVE_FLOOR,
            true,
        );
        Upstream {
            default_group,
            handshake_timeout,
            retry_budget,
            backoff_base,
            backoff_max,
            max_pause: max_pause.min(MAX_MAX_PAUSE),
            slow_handshake,
            adaptive: file.adaptive.unwrap_or(true),
            adaptive_factor,
            adaptive_floor,
            ca_file: file.ca_file,
            groups,
        }
    }
}

/// Parses `ws://host[:port][/path][?query]` or `wss://…`.
pub(in crate::config) fn parse_endpoint(url: &str) -> Result<Endpoint, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err(format!("{url:?} must start with ws:// or wss://")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{url:?}: credentials in the URL are not supported"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let path_prefix = uri.path().trim_end_matches('/').to_owned();
    Ok(Endpoint {
        url: url.to_owned(),
        tls,
        host,
        port,
        authority: authority.as_str().to_owned(),
        path_prefix,
        query: uri.query().unwrap_or("").to_owned(),
        query_keys: form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .map(|(k, _)| k.into_owned())
            .collect(),
    })
}
