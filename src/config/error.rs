//! Config errors, and where in a TOML text they are: the key a parse error is about.

use std::ops::Range;

use super::*;

/// A setting that is missing, malformed or inconsistent, named by its TOML key path
/// (`policy.buy.delays`) or by the environment variable it came from (`SMARTVPS_PASSWORD`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config error: `{key}`: {message}")]
pub struct ConfigError {
    /// The TOML key path or environment variable at fault.
    pub key: String,
    /// What is wrong and, where it helps, what would be right.
    pub message: String,
}

impl ConfigError {
    /// An error about `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TOML errors, mapped to the key they are about.

pub(super) fn parse_file(text: &str) -> Result<RawFile, ConfigError> {
    // Parsing to a spanned document first separates syntax errors from schema errors, and gives
    // the spans that turn a schema error's position back into a key path.
    let document = toml::de::DeTable::parse(text).map_err(|e| syntax_error(text, &e))?;
    toml::from_str::<RawFile>(text).map_err(|e| schema_error(text, document.get_ref(), &e))
}

pub(super) fn schema_error(
    text: &str,
    document: &toml::de::DeTable<'_>,
    error: &toml::de::Error,
) -> ConfigError {
    let span = error.span();
    let key = span
        .as_ref()
        .and_then(|span| key_at(document, span.start, ""));
    let message = error.message().trim_end();
    if key.as_deref() == Some("secret_key") {
        return ConfigError::new(
            "secret_key",
            format!(
                "is read from the {ENV_SECRET_KEY} environment variable only, never from the file"
            ),
        );
    }
    match (key, span) {
        (Some(key), Some(span)) => {
            ConfigError::new(key, format!("{message} (line {})", line_of(text, &span)))
        }
        (None, Some(span)) => {
            let line = line_of(text, &span);
            ConfigError::new(format!("line {line}"), message)
        }
        (_, None) => ConfigError::new("(file)", message),
    }
}

/// The dotted path of the deepest key whose name or value covers byte `offset`.
pub(super) fn key_at(table: &toml::de::DeTable<'_>, offset: usize, prefix: &str) -> Option<String> {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{key}", key = key.get_ref())
        };
        // Tables declared with `[a.b]` headers have spans that need not cover their contents, so
        // always look inside them.
        if let Some(inner) = value.get_ref().as_table()
            && let Some(found) = key_at(inner, offset, &path)
        {
            return Some(found);
        }
        // Arrays of tables (`[[notify.webhooks]]`): name the element, `notify.webhooks[1].url`.
        if let Some(items) = value.get_ref().as_array() {
            for (i, item) in items.iter().enumerate() {
                if let Some(inner) = item.get_ref().as_table() {
                    let element = format!("{path}[{i}]");
                    if let Some(found) = key_at(inner, offset, &element) {
                        return Some(found);
                    }
                    if item.span().contains(&offset) {
                        return Some(element);
                    }
                }
            }
        }
        if key.span().contains(&offset) || value.span().contains(&offset) {
            return Some(path);
        }
    }
    None
}

pub(super) fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let offset = error.span().map_or(text.len(), |span| span.start);
    let line = line_of(text, &(offset..offset));
    let key = key_on_line(text, line).unwrap_or_else(|| format!("line {line}"));
    ConfigError::new(
        key,
        format!(
            "invalid TOML at line {line}: {}",
            error.message().trim_end()
        ),
    )
}

/// 1-based line number of a span's start.
pub(super) fn line_of(text: &str, span: &Range<usize>) -> usize {
    let end = span.start.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Best-effort key path for a line the TOML parser could not read: the table header above it
/// plus the key written at its start.
pub(super) fn key_on_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let header_of = |l: &str| {
        let l = l.trim();
        l.starts_with('[').then(|| {
            let inner = l.trim_start_matches('[');
            let inner = inner.split(']').next().unwrap_or(inner);
            clean_key(inner)
        })
    };
    let current = lines.get(line.checked_sub(1)?)?;
    if let Some(header) = header_of(current) {
        return Some(header).filter(|h| !h.is_empty());
    }
    let table = lines[..line - 1]
        .iter()
        .rev()
        .find_map(|l| header_of(l))
        .filter(|h| !h.is_empty());
    let key = current.trim();
    let key = (!key.starts_with('#'))
        .then(|| key.split('=').next())
        .flatten()
        .map(clean_key)
        .filter(|k| !k.is_empty());
    match (table, key) {
        (Some(table), Some(key)) => Some(format!("{table}.{key}")),
        (table, key) => key.or(table),
    }
}

pub(super) fn clean_key(raw: &str) -> String {
    raw.split('.')
        .map(|part| part.trim().trim_matches(['"', '\'']))
        .collect::<Vec<_>>()
        .join(".")
}
