//! Step 3 of the flow: prove the request really is the tenant it claims to be, so one
//! tenant can never spend another's quota.
//!
//! The credential may come in three carriers, tried in this order:
//! `Authorization: Bearer <token>`, the query parameter `access_token`, or a
//! `Sec-WebSocket-Protocol` entry `access_token.<token>` (browsers cannot set headers on
//! a WebSocket). Whatever carrier was used, every carrier is removed before the request
//! goes upstream: see [`strip_query`] and [`strip_subprotocols`].
//!
//! Credentials never reach logs: [`Credential`]'s `Debug` is redacted.

use std::fmt;
use std::sync::LazyLock;

use http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Auth, Tenant};
use crate::parse::{header_tokens, query_pairs_except};

/// Query parameter carrying a credential.
pub const QUERY_PARAM: &str = "access_token";
/// `Sec-WebSocket-Protocol` entry prefix carrying a credential.
pub const SUBPROTOCOL_PREFIX: &str = "access_token.";
/// Clock skew allowed on `exp`, in seconds.
pub const JWT_LEEWAY_SECS: u64 = 5;
/// Longest credential looked at; longer ones are refused unread.
pub const MAX_CREDENTIAL_LEN: usize = 8192;

/// Where a credential was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// `Authorization: Bearer`
    Bearer,
    /// `?access_token=`
    Query,
    /// `Sec-WebSocket-Protocol: access_token.<token>`
    Subprotocol,
}

impl Carrier {
    /// Name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bearer => "bearer",
            Self::Query => "query",
            Self::Subprotocol => "subprotocol",
        }
    }
}

/// A credential presented by a client.
#[derive(Clone)]
pub struct Credential {
    token: String,
    /// Where it was found.
    pub carrier: Carrier,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({}, <redacted>)", self.carrier.as_str())
    }
}

impl Credential {
    /// The token itself. Never log it.
    pub fn token(&self) -> &str {
        &self.token
    }
}

/// A missing or invalid credential: 401 `unauthorized`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthorized {
    /// The tenant needs a credential and the request carries none.
    #[error("no credential (send Authorization: Bearer, ?access_token= or subprotocol access_token.<token>)")]
    Missing,
    /// The credential is longer than [`MAX_CREDENTIAL_LEN`].
    #[error("credential longer than {MAX_CREDENTIAL_LEN} bytes")]
    TooLong,
    /// No configured API key hash matches.
    #[error("API key does not match")]
    WrongKey,
    /// The JWT is malformed, badly signed, expired or lacks a claim.
    #[error("invalid JWT: {0}")]
    InvalidJwt(String),
    /// The JWT is valid but for another tenant.
    #[error("JWT is for tenant {claimed:?}, not {tenant:?}")]
    WrongTenant {
        /// The `tenant` claim (truncated).
        claimed: String,
        /// The resolved tenant.
        tenant: String,
    },
}

/// Finds the request's credential, if any, in carrier order.
pub fn extract(req: &Parts) -> Option<Credential> {
    let bearer = req
        .headers
        .get_all(AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(bearer_token);
    if let Some(token) = bearer {
        return Some(Credential {
            token: token.to_owned(),
            carrier: Carrier::Bearer,
        });
    }
    if let Some(token) = req.uri.query().and_then(query_token) {
        return Some(Credential {
            token,
            carrier: Carrier::Query,
        });
    }
    subprotocols(req)
        .find_map(|p| p.strip_prefix(SUBPROTOCOL_PREFIX))
        .filter(|t| !t.is_empty())
        .map(|token| Credential {
            token: token.to_owned(),
            carrier: Carrier::Subprotocol,
        })
}

impl Unauthorized {
    /// Whether the only thing wrong is a JWT's `exp`.
    pub fn is_expiry(&self) -> bool {
        matches!(self, Self::InvalidJwt(why) if why == "expired")
    }
}

/// Checks a credential against the tenant's auth.
///
/// # Errors
/// [`Unauthorized`] with what was wrong (safe to log: it never contains the token).
pub fn authenticate(tenant: &Tenant, credential: Option<&Credential>) -> Result<(), Unauthorized> {
    let token = match (&tenant.auth, credential) {
        (Auth::None, _) => return Ok(()),
        (_, None) => return Err(Unauthorized::Missing),
        (_, Some(c)) if c.token.len() > MAX_CREDENTIAL_LEN => return Err(Unauthorized::TooLong),
        (_, Some(c)) => c.token.as_str(),
    };
    match &tenant.auth {
        Auth::None => Ok(()),
        Auth::ApiKey { hashes } => check_api_key(hashes, token),
        Auth::Jwt { secret, .. } => check_jwt(&tenant.name, secret, token),
    }
}

/// Whether a credential that authenticated a live session is still good under
/// `tenant`'s (possibly reloaded) auth: as [`authenticate`], except that a JWT's `exp`
/// is not checked — a token that merely expired during the session is not revoked; a
/// key removed from the config, a changed secret or a changed auth kind is.
///
/// # Errors
/// [`Unauthorized`] with what is wrong now.
pub fn still_authorised(
    tenant: &Tenant,
    credential: Option<&Credential>,
) -> Result<(), Unauthorized> {
    match (&tenant.auth, credential) {
        (Auth::Jwt { secret, .. }, Some(c)) if c.token.len() <= MAX_CREDENTIAL_LEN => {
            check_jwt_with(&tenant.name, secret, &c.token, &VALIDATION_IGNORING_EXP)
        }
        _ => authenticate(tenant, credential),
    }
}

fn check_api_key(hashes: &[[u8; 32]], key: &str) -> Result<(), Unauthorized> {
    let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    // Compare against every hash, without an early exit, in constant time each.
    let mut matched = subtle::Choice::from(0);
    for h in hashes {
        matched |= presented.ct_eq(h);
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err(Unauthorized::WrongKey)
    }
}

#[derive(Deserialize)]
struct Claims {
    tenant: String,
}

/// The JWT rules, the same for every tenant: built once, not per connect.
static VALIDATION: LazyLock<Validation> = LazyLock::new(|| {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = JWT_LEEWAY_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    // sluice is not the audience of identity-provider tokens; the `tenant` claim binds
    // the token to a tenant instead. (jsonwebtoken refuses any `aud` unless told.)
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp"]);
    validation
});

/// [`VALIDATION`] without the `exp` check, for sessions already admitted.
static VALIDATION_IGNORING_EXP: LazyLock<Validation> = LazyLock::new(|| {
    let mut validation = VALIDATION.clone();
    validation.validate_exp = false;
    validation
});

fn check_jwt(tenant: &str, secret: &[u8], token: &str) -> Result<(), Unauthorized> {
    check_jwt_with(tenant, secret, token, &VALIDATION)
}

fn check_jwt_with(
    tenant: &str,
    secret: &[u8],
    token: &str,
    validation: &Validation,
) -> Result<(), Unauthorized> {
    let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret), validation)
        .map_err(|e| Unauthorized::InvalidJwt(jwt_error(&e)))?;
    // Tenant names are matched case-insensitively everywhere.
    if data.claims.tenant.eq_ignore_ascii_case(tenant) {
        Ok(())
    } else {
        Err(Unauthorized::WrongTenant {
            claimed: data.claims.tenant.chars().take(64).collect(),
            tenant: tenant.to_owned(),
        })
    }
}

fn jwt_error(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "expired".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::InvalidAlgorithm => "algorithm is not HS256".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("claim {c:?} missing"),
        ErrorKind::Json(_) => "claims are not valid JSON or lack \"tenant\"".into(),
        ErrorKind::ImmatureSignature => "not valid yet (nbf)".into(),
        _ => "malformed token".into(),
    }
}

fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

fn query_token(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, v)| k == QUERY_PARAM && !v.is_empty())
        .map(|(_, v)| v.into_owned())
}

/// Every `Sec-WebSocket-Protocol` entry of the request, trimmed, in order.
pub fn subprotocols(req: &Parts) -> impl Iterator<Item = &str> {
    header_tokens(&req.headers, &SEC_WEBSOCKET_PROTOCOL)
}

/// The query without any `access_token` parameter; other parameters keep their exact
/// encoding and order. `None` when nothing is left.
pub fn strip_query(query: &str) -> Option<String> {
    let kept: Vec<&str> = query_pairs_except(query, |k| k == QUERY_PARAM).collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// The offered subprotocols without any `access_token.` entry, joined for one header;
/// `None` when none is left.
pub fn strip_subprotocols(req: &Parts) -> Option<String> {
    let kept: Vec<&str> = subprotocols(req)
        .filter(|p| !p.starts_with(SUBPROTOCOL_PREFIX))
        .collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

/// Whether an `Authorization` header value is a Bearer credential (which sluice
/// consumes and does not forward).
pub fn is_bearer(value: &http::HeaderValue) -> bool {
    value.to_str().ok().and_then(bearer_token).is_some()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{SystemTime, UNIX_EPOCH};

    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde::Serialize;

    use super::*;
    use crate::config::Limits;
    use crate::test_util::parts;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn tenant(name: &str, auth: Auth) -> Arc<Tenant> {
        Arc::new(Tenant {
            name: name.into(),
            limits: Limits {
                max_sessions: 1,
                handshake_rate: 1.0,
                handshake_burst: 1,
                queue_depth: 0,
                queue_timeout: std::time::Duration::from_secs(1),
                queue_mode: crate::config::QueueMode::Hold,
                subprotocols: vec![],
                weight: 1,
                enforce: true,
            },
            group: Arc::new(crate::config::Group {
                name: "primary".into(),
                endpoints: vec![],
            }),
            auth,
            calls: None,
        })
    }

    #[derive(Serialize)]
    struct TestClaims<'a> {
        tenant: &'a str,
        exp: u64,
    }

    fn jwt(tenant: &str, exp_offset: i64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let exp = now.checked_add_signed(exp_offset).unwrap();
        encode(
            &Header::new(Algorithm::HS256),
            &TestClaims { tenant, exp },
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    #[test]
    fn carriers_are_found_in_order() {
        let p = parts(
            "/x?access_token=q",
            &[
                ("authorization", "Bearer b"),
                ("sec-websocket-protocol", "sip, access_token.s"),
            ],
        );
        let c = extract(&p).unwrap();
        assert_eq!((c.carrier, c.token()), (Carrier::Bearer, "b"));
        let p = parts(
            "/x?a=1&access_token=q%2B",
            &[("sec-websocket-protocol", "access_token.s")],
        );
        let c = extract(&p).unwrap();
        assert_eq!((c.carrier, c.token()), (Carrier::Query, "q+"));
        let p = parts(
            "/x",
            &[("sec-websocket-protocol", "sip, access_token.s3cr3t")],
        );
        let c = extract(&p).unwrap();
        assert_eq!((c.carrier, c.token()), (Carrier::Subprotocol, "s3cr3t"));
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert!(extract(&parts("/x", &[("authorization", "Basic abc")])).is_none());
    }

    #[test]
    fn stripping_removes_only_credentials() {
        assert_eq!(
            strip_query("a=1&access_token=x&b=%20"),
            Some("a=1&b=%20".into())
        );
        assert_eq!(strip_query("access_token=x"), None);
        assert_eq!(strip_query("access_token"), None);
        let p = parts(
            "/",
            &[
                ("sec-websocket-protocol", "access_token.abc, sip"),
                ("sec-websocket-protocol", "v2"),
            ],
        );
        assert_eq!(strip_subprotocols(&p), Some("sip, v2".into()));
        let p = parts("/", &[("sec-websocket-protocol", "access_token.abc")]);
        assert_eq!(strip_subprotocols(&p), None);
    }

    #[test]
    fn api_key_compares_hashes() {
        let hash: [u8; 32] = Sha256::digest(b"k3y").into();
        let t = tenant(
            "globex",
            Auth::ApiKey {
                hashes: vec![[0; 32], hash],
            },
        );
        let good = extract(&parts("/?access_token=k3y", &[])).unwrap();
        let bad = extract(&parts("/?access_token=k3z", &[])).unwrap();
        assert_eq!(authenticate(&t, Some(&good)), Ok(()));
        assert_eq!(authenticate(&t, Some(&bad)), Err(Unauthorized::WrongKey));
        assert_eq!(authenticate(&t, None), Err(Unauthorized::Missing));
    }

    #[test]
    fn jwt_checks_signature_expiry_and_tenant() {
        let auth = Auth::Jwt {
            secret: SECRET.to_vec(),
            origin: "test".into(),
        };
        let acme = tenant("acme", auth.clone());
        let cred =
            |t: String| extract(&parts("/", &[("authorization", &format!("Bearer {t}"))])).unwrap();
        assert_eq!(authenticate(&acme, Some(&cred(jwt("acme", 60)))), Ok(()));
        assert!(matches!(
            authenticate(&acme, Some(&cred(jwt("globex", 60)))),
            Err(Unauthorized::WrongTenant { .. })
        ));
        assert_eq!(
            authenticate(&acme, Some(&cred(jwt("acme", -120)))),
            Err(Unauthorized::InvalidJwt("expired".into()))
        );
        let other = tenant(
            "acme",
            Auth::Jwt {
                secret: b"another-secret-another".to_vec(),
                origin: "t".into(),
            },
        );
        assert_eq!(
            authenticate(&other, Some(&cred(jwt("acme", 60)))),
            Err(Unauthorized::InvalidJwt("bad signature".into()))
        );
        assert!(authenticate(&acme, Some(&cred("not.a.jwt".into()))).is_err());
        // Tokens from identity providers carry an audience; it does not matter here.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let with_aud = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"tenant": "acme", "exp": now + 60, "aud": "genesys"}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(authenticate(&acme, Some(&cred(with_aud))), Ok(()));
        let not_yet = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"tenant": "acme", "exp": now + 600, "nbf": now + 300}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(
            authenticate(&acme, Some(&cred(not_yet))),
            Err(Unauthorized::InvalidJwt("not valid yet (nbf)".into()))
        );
    }
}
