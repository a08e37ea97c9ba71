//! Beside the flow (DESIGN.md, "Configuration"): validating a tenant's name, limits and auth.

use std::collections::HashMap;

use super::super::defaults::builtin_limits;
use super::super::file::{AuthFile, LimitsFile, TenantFile};
use super::super::{
    Auth, Calls, Limits, QueueMode, DEFAULT_CALL_IDLE_TIMEOUT, DEFAULT_INVITE_QUEUE_DEPTH,
    DEFAULT_INVITE_QUEUE_TIMEOUT, MAX_TENANT_NAME,
};
use super::Validator;

/// Checks a tenant name: 1 to 64 of `a-z 0-9 - _`, not starting with `_` (reserved for
/// `_default` and `_unknown`).
///
/// # Errors
/// Why the name is not allowed.
pub fn check_tenant_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_TENANT_NAME {
        return Err(format!(
            "tenant names are 1 to {MAX_TENANT_NAME} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "tenant name {name:?} may only use lower-case letters, digits, '-' and '_'"
        ));
    }
    if name.starts_with('_') {
        return Err(format!(
            "tenant name {name:?} may not start with '_' (reserved for _default and _unknown)"
        ));
    }
    Ok(())
}

// === impl Validator ===

impl Validator {
    /// Fills a limits table: from `file`, else from `base` (the `[defaults]`), else
    /// from the built-in defaults.
    pub(super) fn limits(
        &mut self,
        prefix: &str,
        file: &LimitsFile,
        base: Option<&Limits>,
    ) -> Limits {
        let key = |k: &str| format!("{prefix}.{k}");
        let builtin = builtin_limits();
        let base = base.unwrap_or(&builtin);
        let queue_mode = match file.queue_mode.as_deref() {
            None => base.queue_mode,
            Some("hold") => QueueMode::Hold,
            Some("accept") => QueueMode::Accept,
            Some(other) => {
                self.fail(
                    &key("queue_mode"),
                    format!("{other:?} is not one of \"hold\", \"accept\""),
                );
                base.queue_mode
            }
        };
        let subprotocols = match &file.subprotocols {
            None => base.subprotocols.clone(),
            Some(list) => {
                for p in list {
                    if p.is_empty() || !p.bytes().all(is_token_byte) {
                        self.fail(
                            &key("subprotocols"),
                            format!("{p:?} is not a valid subprotocol token"),
                        );
                    }
                }
                list.clone()
            }
        };
        Limits {
            max_sessions: self.positive_u32(
                &key("max_sessions"),
                file.max_sessions,
                base.max_sessions,
            ),
            handshake_rate: self.positive_rate(
                &key("handshake_rate"),
                file.handshake_rate,
                base.handshake_rate,
            ),
            handshake_burst: self.positive_u32(
                &key("handshake_burst"),
                file.handshake_burst,
                base.handshake_burst,
            ),
            queue_depth: self.u32_allow_zero(
                &key("queue_depth"),
                file.queue_depth,
                base.queue_depth,
            ),
            queue_timeout: self.positive_duration(
                &key("queue_timeout"),
                file.queue_timeout,
                base.queue_timeout,
            ),
            queue_mode,
            subprotocols,
            weight: self.positive_u32(&key("weight"), file.weight, base.weight),
            enforce: file.enforce.unwrap_or(base.enforce),
        }
    }

    /// Shadow mode (`enforce = false` at `prefix`) is refused with `[cluster]`: a shadow
    /// tenant's sessions must count in the edge's totals without waiting, which the
    /// shared (Redis) capacity has no operation for (see [`crate::admission::shadow`]).
    pub(super) fn shadow_alone(&mut self, prefix: &str, enforce: Option<bool>, clustered: bool) {
        if enforce == Some(false) && clustered {
            self.fail(
                &format!("{prefix}.enforce"),
                "shadow mode (enforce = false) is not supported with [cluster] yet: its sessions could not count in the limits the replicas share; run the roll-out on one replica without [cluster], or enforce",
            );
        }
    }

    /// A tenant's call limits (`None` when it sets none of the call keys); they need
    /// `queue_mode = "accept"` and `sip` among its `subprotocols` (`limits`, validated).
    pub(super) fn calls(
        &mut self,
        prefix: &str,
        file: &TenantFile,
        limits: &Limits,
    ) -> Option<Calls> {
        let key = |k: &str| format!("{prefix}.{k}");
        let set = [
            ("max_calls", file.max_calls.is_some()),
            ("call_rate", file.call_rate.is_some()),
            ("call_burst", file.call_burst.is_some()),
            ("invite_queue_depth", file.invite_queue_depth.is_some()),
            ("invite_queue_timeout", file.invite_queue_timeout.is_some()),
            ("call_idle_timeout", file.call_idle_timeout.is_some()),
        ];
        let first = set.iter().find(|(_, present)| *present)?.0;
        if limits.queue_mode != QueueMode::Accept {
            self.fail(
                &key(first),
                "call limits need queue_mode = \"accept\": sluice must read the tenant's SIP messages, which it does only when it answers the upgrade itself",
            );
        }
        if !limits
            .subprotocols
            .iter()
            .any(|p| p.eq_ignore_ascii_case("sip"))
        {
            self.fail(
                &key(first),
                "call limits need \"sip\" among the tenant's subprotocols (SIP over WebSocket, RFC 7118)",
            );
        }
        let max_calls = file
            .max_calls
            .map(|n| self.positive_u32(&key("max_calls"), Some(n), 1));
        let call_rate = file
            .call_rate
            .map(|r| self.positive_rate(&key("call_rate"), Some(r), 1.0));
        if file.call_burst.is_some() && call_rate.is_none() {
            self.fail(
                &key("call_burst"),
                "only means something with call_rate: set call_rate (initial INVITEs per second) or leave call_burst out",
            );
        }
        // A burst of one second's calls unless set: the rate's own default shape.
        let burst_default =
            call_rate.map_or(1, |r| r.ceil().clamp(1.0, f64::from(u32::MAX)) as u32);
        Some(Calls {
            max_calls,
            call_rate,
            call_burst: self.positive_u32(&key("call_burst"), file.call_burst, burst_default),
            invite_queue_depth: self.u32_allow_zero(
                &key("invite_queue_depth"),
                file.invite_queue_depth,
                DEFAULT_INVITE_QUEUE_DEPTH,
            ),
            invite_queue_timeout: self.positive_duration(
                &key("invite_queue_timeout"),
                file.invite_queue_timeout,
                DEFAULT_INVITE_QUEUE_TIMEOUT,
            ),
            call_idle_timeout: self.positive_duration(
                &key("call_idle_timeout"),
                file.call_idle_timeout,
                DEFAULT_CALL_IDLE_TIMEOUT,
            ),
        })
    }

    pub(super) fn auth(
        &mut self,
        key: &str,
        file: &AuthFile,
        env: &HashMap<String, String>,
    ) -> Auth {
        let kind = file.kind.as_deref().unwrap_or("");
        let unexpected = |v: &mut Self, field: &str, present: bool| {
            if present {
                v.fail(
                    &format!("{key}.{field}"),
                    format!("not used by kind = {kind:?}"),
                );
            }
        };
        match kind {
            "none" => {
                unexpected(self, "secret_env", file.secret_env.is_some());
                unexpected(self, "secret_file", file.secret_file.is_some());
                unexpected(self, "key_sha256", file.key_sha256.is_some());
                Auth::None
            }
            "api-key" => {
                unexpected(self, "secret_env", file.secret_env.is_some());
                unexpected(self, "secret_file", file.secret_file.is_some());
                let list = file.key_sha256.clone().unwrap_or_default();
                if list.is_empty() {
                    self.fail(
                        &format!("{key}.key_sha256"),
                        "required for kind = \"api-key\": a list of hex SHA-256 hashes of the keys (`printf %s KEY | sha256sum`)",
                    );
                }
                let mut hashes = Vec::new();
                for (i, h) in list.iter().enumerate() {
                    let mut out = [0u8; 32];
                    match hex::decode_to_slice(h.trim(), &mut out) {
                        Ok(()) => hashes.push(out),
                        Err(_) => self.fail(
                            &format!("{key}.key_sha256[{i}]"),
                            "is not 64 hex digits (a SHA-256 hash of the key, not the key itself)",
                        ),
                    }
                }
                Auth::ApiKey { hashes }
            }
            "jwt" => {
                unexpected(self, "key_sha256", file.key_sha256.is_some());
                let secret = match (&file.secret_env, &file.secret_file) {
                    (Some(_), Some(_)) => {
                        self.fail(key, "set one of secret_env and secret_file, not both");
                        None
                    }
                    (None, None) => {
                        self.fail(
                            key,
                            "kind = \"jwt\" needs secret_env (an environment variable holding the HS256 secret) or secret_file",
                        );
                        None
                    }
                    (Some(var), None) => match env.get(var) {
                        Some(s) if !s.is_empty() => {
                            Some((s.as_bytes().to_vec(), format!("env {var}")))
                        }
                        _ => {
                            self.fail(
                                &format!("{key}.secret_env"),
                                format!("environment variable {var} is not set or empty"),
                            );
                            None
                        }
                    },
                    (None, Some(path)) => match std::fs::read(path) {
                        Ok(bytes) => {
                            let trimmed = trim_ascii_end(&bytes).to_vec();
                            if trimmed.is_empty() {
                                self.fail(
                                    &format!("{key}.secret_file"),
                                    format!("{} is empty", path.display()),
                                );
                                None
                            } else {
                                Some((trimmed, format!("file {}", path.display())))
                            }
                        }
                        Err(e) => {
                            self.fail(
                                &format!("{key}.secret_file"),
                                format!("cannot read {}: {e}", path.display()),
                            );
                            None
                        }
                    },
                };
                if let Some((secret, _)) = &secret {
                    if secret.len() < 16 {
                        self.fail(
                            key,
                            format!(
                                "the HS256 secret is {} bytes; use at least 16 (32 random bytes recommended)",
                                secret.len()
                            ),
                        );
                    }
                }
                let (secret, origin) = secret.unwrap_or_default();
                Auth::Jwt { secret, origin }
            }
            "" => {
                self.fail(
                    &format!("{key}.kind"),
                    "required: \"none\", \"api-key\" or \"jwt\"",
                );
                Auth::None
            }
            other => {
                self.fail(
                    &format!("{key}.kind"),
                    format!("{other:?} is not one of \"none\", \"api-key\", \"jwt\""),
                );
                Auth::None
            }
        }
    }
}

/// A secret file usually ends with a newline that is not part of the secret.
fn trim_ascii_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

/// RFC 7230 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
