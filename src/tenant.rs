//! Step 2 of the flow: find out which tenant a request belongs to.
//!
//! The configured sources are tried in order (`tenant_identity.sources`); the first one
//! that yields a name decides. A name that is not configured is refused, or mapped to
//! the shared `_default` tenant when `tenant_identity.unknown = "default"`.

use std::sync::Arc;

use http::request::Parts;

use crate::config::{check_tenant_name, Config, Identity, IdentitySource, Tenant};

/// Path prefix that names a tenant: `/t/{tenant}/…`.
pub const PATH_PREFIX: &str = "/t/";

/// Where resolution finds tenants by name: the config's map, or the proxy's tenant
/// table (whose handles the flow then passes on).
pub trait Directory {
    /// What a name resolves to.
    type Tenant: Clone;
    /// The configured tenant `name` (lowercase, a valid name).
    fn named(&self, name: &str) -> Option<Self::Tenant>;
    /// The shared `_default` tenant, when `tenant_identity.unknown = "default"`.
    fn fallback(&self) -> Option<Self::Tenant>;
}

impl Directory for Config {
    type Tenant = Arc<Tenant>;
    fn named(&self, name: &str) -> Option<Arc<Tenant>> {
        self.tenants.get(name).cloned()
    }
    fn fallback(&self) -> Option<Arc<Tenant>> {
        self.default_tenant.clone()
    }
}

/// The tenant of a request, and the path to forward upstream.
#[derive(Debug, Clone)]
pub struct Resolved<T = Arc<Tenant>> {
    /// The tenant (possibly the shared `_default`).
    pub tenant: T,
    /// Which source named it (the first configured source when `_default` was
    /// chosen for a request that named none).
    pub source: IdentitySource,
    /// Request path to forward: with the `/t/{tenant}` prefix removed when the path
    /// named the tenant.
    pub forward_path: String,
}

/// No tenant could be resolved: 403 `tenant-unknown`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantUnknown {
    /// No source yielded a name.
    #[error("no tenant in the request (tried {0})")]
    Missing(String),
    /// A source yielded a name that is not configured.
    #[error("tenant {name:?} from {via} is not configured")]
    Unknown {
        /// The name as found (truncated, for logs).
        name: String,
        /// The source that named it.
        via: &'static str,
    },
}

/// Resolves the tenant of a request head among `config`'s tenants.
///
/// # Errors
/// [`TenantUnknown`] when no source names a tenant, or the named one is not configured
/// and unknown tenants are rejected.
pub fn resolve(config: &Config, req: &Parts) -> Result<Resolved, TenantUnknown> {
    resolve_in(&config.identity, config, req)
}

/// Resolves the tenant of a request head by the sources of `identity`, in `tenants`.
///
/// # Errors
/// [`TenantUnknown`] as [`resolve`].
pub fn resolve_in<D: Directory>(
    identity: &Identity,
    tenants: &D,
    req: &Parts,
) -> Result<Resolved<D::Tenant>, TenantUnknown> {
    let path = req.uri.path();
    for &source in &identity.sources {
        let found = match source {
            IdentitySource::Path => from_path(path).map(|(name, rest)| (name, rest.to_owned())),
            IdentitySource::Header => req
                .headers
                .get(&identity.header)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|name| (name, path.to_owned())),
            IdentitySource::Host => identity
                .host_suffix
                .as_deref()
                .and_then(|suffix| from_host(req, suffix))
                .map(|name| (name, path.to_owned())),
        };
        let Some((name, forward_path)) = found else {
            continue;
        };
        // Most names are lowercase already: no copy for those.
        let name: std::borrow::Cow<'_, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            name.to_ascii_lowercase().into()
        } else {
            name.into()
        };
        let tenant = match check_tenant_name(&name) {
            Ok(()) => tenants.named(&name).or_else(|| tenants.fallback()),
            // Not a name any tenant could have: unknown, like any other.
            Err(_) => tenants.fallback(),
        };
        return match tenant {
            Some(tenant) => Ok(Resolved {
                tenant,
                source,
                forward_path,
            }),
            None => Err(TenantUnknown::Unknown {
                name: name.chars().take(crate::config::MAX_TENANT_NAME).collect(),
                via: source.as_str(),
            }),
        };
    }
    if let Some(tenant) = tenants.fallback() {
        // `unknown = "default"` admits a request that names no tenant as well.
        return Ok(Resolved {
            tenant,
            source: identity.sources[0],
            forward_path: path.to_owned(),
        });
    }
    let tried: Vec<&str> = identity.sources.iter().map(|s| s.as_str()).collect();
    Err(TenantUnknown::Missing(tried.join(", ")))
}

/// `/t/acme/ws` → (`acme`, `/ws`); `/t/acme` → (`acme`, `/`).
fn from_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(PATH_PREFIX)?;
    let (name, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    (!name.is_empty()).then_some((name, tail))
}

/// `acme.softphone.example.com[:port]` with suffix `.softphone.example.com` → `acme`.
fn from_host<'a>(req: &'a Parts, suffix: &str) -> Option<&'a str> {
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.host())?;
    // Drop a port; IPv6 literals have no subdomain, so they never match a suffix.
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.len() <= suffix.len() || !host.is_char_boundary(host.len() - suffix.len()) {
        return None;
    }
    let (label, tail) = host.split_at(host.len() - suffix.len());
    (tail.eq_ignore_ascii_case(suffix) && !label.contains('.')).then_some(label)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::test_util::parts;

    fn config(extra: &str) -> Config {
        let text = format!(
            r#"
[tenant_identity]
host_suffix = ".softphone.example.com"
{extra}
[upstream.groups.primary]
endpoints = ["ws://127.0.0.1:1"]
[tenants.acme]
auth = {{ kind = "none" }}
[tenants.globex]
auth = {{ kind = "none" }}
"#
        );
        Config::parse(&text, &HashMap::new()).unwrap()
    }

    #[test]
    fn path_prefix_names_tenant_and_is_stripped() {
        let c = config("");
        let r = resolve(&c, &parts("/t/acme/ws/v1?x=1", &[])).unwrap();
        assert_eq!(r.tenant.name, "acme");
        assert_eq!(r.source, IdentitySource::Path);
        assert_eq!(r.forward_path, "/ws/v1");
        let r = resolve(&c, &parts("/t/ACME", &[])).unwrap();
        assert_eq!(r.tenant.name, "acme");
        assert_eq!(r.forward_path, "/");
    }

    #[test]
    fn header_then_host_in_order() {
        let c = config("");
        let r = resolve(&c, &parts("/ws", &[("x-tenant-id", "globex")])).unwrap();
        assert_eq!(
            (r.tenant.name.as_str(), r.source),
            ("globex", IdentitySource::Header)
        );
        assert_eq!(r.forward_path, "/ws");
        let r = resolve(
            &c,
            &parts("/ws", &[("host", "acme.softphone.example.com:8443")]),
        )
        .unwrap();
        assert_eq!(
            (r.tenant.name.as_str(), r.source),
            ("acme", IdentitySource::Host)
        );
        // path wins over header when listed first
        let r = resolve(&c, &parts("/t/acme/x", &[("x-tenant-id", "globex")])).unwrap();
        assert_eq!(r.tenant.name, "acme");
    }

    #[test]
    fn configured_order_is_respected() {
        let c = config("sources = [\"header\", \"path\"]");
        let r = resolve(&c, &parts("/t/acme/x", &[("x-tenant-id", "globex")])).unwrap();
        assert_eq!(r.tenant.name, "globex");
        // the path was not what named the tenant, so it is forwarded unchanged
        assert_eq!(r.forward_path, "/t/acme/x");
    }

    #[test]
    fn unknown_and_missing_are_refused() {
        let c = config("");
        assert!(matches!(
            resolve(&c, &parts("/t/initech/x", &[])),
            Err(TenantUnknown::Unknown { .. })
        ));
        assert!(matches!(
            resolve(&c, &parts("/ws", &[("host", "a.b.softphone.example.com")])),
            Err(TenantUnknown::Missing(_))
        ));
        assert!(matches!(
            resolve(&c, &parts("/t//x", &[])),
            Err(TenantUnknown::Missing(_))
        ));
        assert!(matches!(
            resolve(&c, &parts("/t/a%2Fb/x", &[])),
            Err(TenantUnknown::Unknown { .. })
        ));
    }

    #[test]
    fn unknown_maps_to_default_when_configured() {
        let c = config("unknown = \"default\"");
        let r = resolve(&c, &parts("/t/initech/x", &[])).unwrap();
        assert_eq!(r.tenant.name, "_default");
        assert_eq!(r.forward_path, "/x");
        // so is a request naming no tenant at all
        let r = resolve(&c, &parts("/x", &[])).unwrap();
        assert_eq!(
            (r.tenant.name.as_str(), r.forward_path.as_str()),
            ("_default", "/x")
        );
    }
}
