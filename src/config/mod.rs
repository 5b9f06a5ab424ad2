//! Configuration: one TOML file, parsed into typed, validated structs at the edge.
//!
//! Loading runs in three steps so that an operator sees every problem at once:
//! syntax (all errors the TOML parser recovers from), shape (unknown keys, wrong types),
//! then meaning (URLs, durations, CIDRs, secrets, cross-field rules) in `validate.rs`.

mod duration;
mod env;
mod error;
mod keys;
mod raw;
mod types;
mod validate;

use std::path::Path;

pub use duration::parse as parse_duration;
pub use error::{ConfigError, Problem};
pub use types::*;

use error::line_col;

/// Reads and validates the configuration file, taking `${NAME}` values from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    load_str(&src, path, &|name| std::env::var(name).ok())
}

/// Validates configuration text; `path` names it in messages and anchors relative `*_file` paths.
pub fn load_str(src: &str, path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let invalid = |problems: Vec<Problem>| ConfigError::Invalid {
        file: path.to_owned(),
        problems,
    };
    let locate = |offset: usize, key: String, message: String| {
        let (line, column) = line_col(src, offset);
        Problem {
            line,
            column,
            key,
            message,
        }
    };

    let (doc, syntax_errors) = toml::de::DeTable::parse_recoverable(src);
    if !syntax_errors.is_empty() {
        let problems = syntax_errors
            .iter()
            .map(|e| {
                let offset = e.span().map(|s| s.start).unwrap_or(0);
                locate(offset, String::new(), format!("invalid TOML: {}", e.message().trim()))
            })
            .collect();
        return Err(invalid(problems));
    }

    let index = keys::KeyIndex::new(&doc);
    let mut unknown = Vec::new();
    let deserializer = toml::de::Deserializer::from(doc.clone());
    let mut on_unknown = |p: serde_ignored::Path<'_>| unknown.push(keys::clean_path(&p.to_string()));
    let ignoring = serde_ignored::Deserializer::new(deserializer, &mut on_unknown);
    let parsed: Result<raw::RawConfig, _> = serde_path_to_error::deserialize(ignoring);

    let mut problems: Vec<Problem> = unknown
        .iter()
        .map(|key| {
            let offset = index.key_offset(key).unwrap_or(0);
            locate(offset, keys::display_path(key), keys::unknown_key_message(key))
        })
        .collect();

    let raw = match parsed {
        Ok(raw) => raw,
        Err(err) => {
            let key = keys::clean_path(&err.path().to_string());
            let offset = err
                .inner()
                .span()
                .map(|s| s.start)
                .or_else(|| index.key_offset(&key))
                .unwrap_or(0);
            problems.push(locate(
                offset,
                keys::display_path(&key),
                err.inner().message().trim().to_owned(),
            ));
            problems.sort_by_key(|p| (p.line, p.column));
            return Err(invalid(problems));
        }
    };

    let base_dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut ctx = validate::Ctx::new(src, base_dir, env);
    let config = validate::validate(raw, &mut ctx);
    problems.extend(ctx.into_problems());
    problems.sort_by_key(|p| (p.line, p.column));
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(invalid(problems)),
    }
}
