//! The config file as written: every field optional, durations as text, unknown keys refused.

use super::*;

// ---------------------------------------------------------------------------------------------
// The file as written: every field optional, durations as text, unknown keys refused.

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a TOML document of tables")]
pub(super) struct RawFile {
    pub(super) policy: Option<RawPolicy>,
    pub(super) smartvps: Option<RawSmartVps>,
    pub(super) database: Option<RawDatabase>,
    pub(super) server: Option<RawServer>,
    pub(super) worker: Option<RawWorker>,
    pub(super) notify: Option<RawNotify>,
    pub(super) catalog: Option<RawCatalog>,
    pub(super) admin: Option<RawAdmin>,
    pub(super) storefronts: Option<Vec<RawStorefront>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [policy] table")]
pub(super) struct RawPolicy {
    pub(super) on_unknown: Option<String>,
    pub(super) buy: Option<RawPhase>,
    pub(super) status: Option<RawPhase>,
    pub(super) action: Option<RawPhase>,
    pub(super) install: Option<RawInstall>,
    pub(super) renew: Option<RawRenew>,
}

#[derive(Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table with attempts, timeout, delays, horizon, remind_before and sweep"
)]
pub(super) struct RawRenew {
    pub(super) attempts: Option<u32>,
    pub(super) timeout: Option<DurationText>,
    pub(super) delays: Option<Vec<DurationText>>,
    pub(super) horizon: Option<DurationText>,
    pub(super) remind_before: Option<DurationText>,
    pub(super) sweep: Option<DurationText>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table with poll and limit")]
pub(super) struct RawInstall {
    pub(super) poll: Option<DurationText>,
    pub(super) limit: Option<DurationText>,
}

#[derive(Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table with attempts, timeout and delays"
)]
pub(super) struct RawPhase {
    pub(super) attempts: Option<u32>,
    pub(super) timeout: Option<DurationText>,
    pub(super) delays: Option<Vec<DurationText>>,
    pub(super) horizon: Option<DurationText>,
    pub(super) per_hour: Option<u32>,
}

// No `Debug` here: it holds the password in the clear.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [smartvps] table")]
pub(super) struct RawSmartVps {
    pub(super) base_url: Option<String>,
    pub(super) path_prefix: Option<String>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [database] table")]
pub(super) struct RawDatabase {
    pub(super) url: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [server] table")]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_connections_per_client: Option<usize>,
    pub(super) header_timeout: Option<DurationText>,
    pub(super) body_timeout: Option<DurationText>,
    pub(super) idle_timeout: Option<DurationText>,
    pub(super) max_body_bytes: Option<usize>,
    pub(super) auth_failure_burst: Option<u32>,
    pub(super) auth_failures_per_minute: Option<u32>,
    pub(super) trusted_proxies: Option<Vec<String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [worker] table")]
pub(super) struct RawWorker {
    pub(super) concurrency: Option<usize>,
    pub(super) lease: Option<DurationText>,
    pub(super) poll_interval: Option<DurationText>,
    pub(super) shutdown_grace: Option<DurationText>,
    pub(super) purchase_grace: Option<DurationText>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [notify] table")]
pub(super) struct RawNotify {
    pub(super) max_attempts: Option<u32>,
    pub(super) backoff_base: Option<DurationText>,
    pub(super) backoff_cap: Option<DurationText>,
    pub(super) timeout: Option<DurationText>,
    pub(super) webhooks: Option<Vec<RawWebhook>>,
    pub(super) email: Option<RawEmail>,
    pub(super) public_url: Option<String>,
    pub(super) templates: Option<RawTemplates>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [notify.templates] table")]
pub(super) struct RawTemplates {
    pub(super) from: Option<String>,
    pub(super) signature: Option<String>,
    pub(super) support_url: Option<String>,
    pub(super) provisioning: Option<RawTemplate>,
    pub(super) ready: Option<RawTemplate>,
    pub(super) failed: Option<RawTemplate>,
    pub(super) delayed: Option<RawTemplate>,
    pub(super) needs_attention: Option<RawTemplate>,
    pub(super) cancelled: Option<RawTemplate>,
    pub(super) resumed: Option<RawTemplate>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table with subject and body")]
pub(super) struct RawTemplate {
    pub(super) subject: Option<String>,
    pub(super) body: Option<String>,
}

// No `Debug`: it can hold a secret in the clear.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[notify.webhooks]] table")]
pub(super) struct RawWebhook {
    pub(super) name: Option<String>,
    pub(super) url: Option<String>,
    pub(super) secret: Option<String>,
    pub(super) secret_env: Option<String>,
    pub(super) trusted: Option<bool>,
    pub(super) events: Option<Vec<String>>,
}

// No `Debug`: it can hold the password in the clear.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [notify.email] table")]
pub(super) struct RawEmail {
    pub(super) host: Option<String>,
    pub(super) port: Option<u16>,
    pub(super) tls: Option<String>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) from: Option<String>,
    pub(super) admin_to: Option<Vec<String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [catalog] table")]
pub(super) struct RawCatalog {
    pub(super) sync_interval: Option<DurationText>,
    pub(super) low_stock: Option<u32>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [admin] table")]
pub(super) struct RawAdmin {
    pub(super) tokens: Option<Vec<RawAdminToken>>,
}

// No `Debug` here: it holds admin tokens in the clear.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table with name and token, as in [[admin.tokens]]"
)]
pub(super) struct RawAdminToken {
    pub(super) name: Option<String>,
    pub(super) token: Option<String>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table with name and secret_env, as in [[storefronts]]"
)]
pub(super) struct RawStorefront {
    pub(super) name: Option<String>,
    pub(super) secret_env: Option<String>,
}

/// A duration as written. Only strings are accepted, so `timeout = 120` (of unknown unit) is
/// refused with a hint rather than guessed at.
pub(super) struct DurationText(pub(super) String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a duration string with its unit, such as "120s" or "2m""#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationText, E> {
                Ok(DurationText(v.to_owned()))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

pub(super) fn parse_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        ConfigError::new(
            key,
            format!("invalid duration {text:?}: {e} (write e.g. \"120s\" or \"2m\")"),
        )
    })
}
