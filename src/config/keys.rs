//! Key paths: where a key sits in the file, and what keys a section accepts.

use std::fmt;

use serde::de::{self, Deserialize, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::raw;

/// Finds the position of any key path in the parsed document.
pub struct KeyIndex<'i> {
    doc: Spanned<DeTable<'i>>,
}

impl<'i> KeyIndex<'i> {
    /// Indexes a parsed document.
    pub fn new(doc: &Spanned<DeTable<'i>>) -> Self {
        KeyIndex { doc: doc.clone() }
    }

    /// Byte offset of the key named by a canonical path (`providers.0.issuer`), or of its nearest existing parent.
    pub fn key_offset(&self, path: &str) -> Option<usize> {
        let mut table: &DeTable<'_> = self.doc.get_ref();
        let mut array: Option<&[Spanned<DeValue<'_>>]> = None;
        let mut found = None;
        for segment in path.split('.').filter(|s| !s.is_empty()) {
            let value = if let Some(items) = array {
                let item = segment.parse::<usize>().ok().and_then(|i| items.get(i))?;
                found = Some(item.span().start);
                item
            } else {
                let (key, value) = table.iter().find(|(k, _)| k.get_ref().as_ref() == segment)?;
                found = Some(key.span().start);
                value
            };
            match value.get_ref() {
                DeValue::Table(t) => {
                    table = t;
                    array = None;
                }
                DeValue::Array(items) => array = Some(items.as_ref()),
                _ => array = None,
            }
        }
        found
    }
}

/// Canonical form of a serde path: dotted, array indexes as segments, no `Option`/`Spanned` noise.
pub fn clean_path(path: &str) -> String {
    path.replace('[', ".")
        .replace(']', "")
        .split('.')
        .filter(|s| !s.is_empty() && *s != "?" && !s.starts_with("$__serde_spanned_private"))
        .collect::<Vec<_>>()
        .join(".")
}

/// The path as shown to people: `providers[0].issuer`.
pub fn display_path(canonical: &str) -> String {
    let mut out = String::new();
    for segment in canonical.split('.').filter(|s| !s.is_empty()) {
        if is_index(segment) {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}

fn is_index(segment: &str) -> bool {
    !segment.is_empty() && segment.chars().all(|c| c.is_ascii_digit())
}

/// The message for a key the schema does not know, with the likeliest intended key.
pub fn unknown_key_message(canonical: &str) -> String {
    let (section, name) = match canonical.rsplit_once('.') {
        Some((section, name)) => (section, name),
        None => ("", canonical),
    };
    let section_shape: String = section
        .split('.')
        .map(|s| if is_index(s) { "N" } else { s })
        .collect::<Vec<_>>()
        .join(".");
    let known: &[&str] = match section_shape.as_str() {
        "" => fields::<raw::RawConfig>(),
        "server" => fields::<raw::RawServer>(),
        "upstream" => fields::<raw::RawUpstream>(),
        "identity" => fields::<raw::RawIdentity>(),
        "session" => fields::<raw::RawSession>(),
        "providers.N" => fields::<raw::RawProvider>(),
        "mapping" => fields::<raw::RawMapping>(),
        "groups" => fields::<raw::RawGroups>(),
        "bitbucket" => fields::<raw::RawBitbucket>(),
        "sso" => fields::<raw::RawSso>(),
        "sso.backdoor" => fields::<raw::RawBackdoor>(),
        "sso.redirection_rules.N" => fields::<raw::RawRedirectionRule>(),
        "ui" => fields::<raw::RawUi>(),
        "admin" => fields::<raw::RawAdmin>(),
        "log" => fields::<raw::RawLog>(),
        _ => &[],
    };
    let what = if section.is_empty() {
        "section".to_owned()
    } else {
        format!("key in [{}]", display_path(section))
    };
    match known.iter().min_by_key(|k| edit_distance(k, name)) {
        Some(best) if edit_distance(best, name) <= 2 => {
            format!("unknown {what} `{name}`; did you mean `{best}`?")
        }
        _ if !known.is_empty() => format!("unknown {what} `{name}`; expected one of: {}", known.join(", ")),
        _ => format!("unknown {what} `{name}`; remove it"),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The field names a derived `Deserialize` struct accepts, read from serde itself so the schema is written once.
fn fields<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    match T::deserialize(FieldsProbe) {
        Err(Found(fields)) => fields,
        Ok(_) => &[],
    }
}

struct FieldsProbe;

#[derive(Debug)]
struct Found(&'static [&'static str]);

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("fields probe")
    }
}
impl std::error::Error for Found {}
impl de::Error for Found {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Found(&[])
    }
}

impl<'de> de::Deserializer<'de> for FieldsProbe {
    type Error = Found;
    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
        Err(Found(&[]))
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Found> {
        Err(Found(fields))
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned_and_displayed() {
        assert_eq!(
            clean_path("providers[0].$__serde_spanned_private_value.issuer"),
            "providers.0.issuer"
        );
        assert_eq!(clean_path("server.?.listn"), "server.listn");
        assert_eq!(display_path("providers.0.issuer"), "providers[0].issuer");
        assert_eq!(
            display_path("sso.redirection_rules.1.provider"),
            "sso.redirection_rules[1].provider"
        );
    }

    #[test]
    fn unknown_keys_get_a_suggestion_from_the_schema() {
        assert_eq!(
            unknown_key_message("server.listn"),
            "unknown key in [server] `listn`; did you mean `listen`?"
        );
        assert!(unknown_key_message("providers.2.clientid").contains("did you mean `client_id`?"));
        assert!(unknown_key_message("servr").contains("did you mean `server`?"));
        assert!(unknown_key_message("log.colour_scheme").contains("expected one of: format, level"));
    }
}
