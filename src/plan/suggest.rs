//! Entry, `sluice plan --suggest`: the smallest limits under which every tenant's p99 wait meets a target, by search over the same simulation.

use std::time::Duration;

use serde::Serialize;

use super::{Client, Options};
use crate::config::Config;

/// Suggested limits.
#[derive(Debug, Clone, Serialize)]
pub struct Suggestion {}

/// Searches limits for `clients` under `config` that keep every p99 wait under `target`.
pub fn suggest(
    _config: &Config,
    _clients: &[Client],
    _options: &Options,
    _target: Duration,
) -> Suggestion {
    Suggestion {}
}

/// The suggestion as a config snippet.
pub fn render(_s: &Suggestion, _target: Duration) -> String {
    String::new()
}
