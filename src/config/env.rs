//! `${NAME}` substitution in configuration strings.

/// Replaces every `${NAME}` with the variable's value; `$$` stands for a literal `$`.
///
/// Returns the name of the first undefined variable, or a description of a malformed reference.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !input.contains('$') {
        return Ok(input.to_owned());
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail
                .find('}')
                .ok_or_else(|| "an unterminated `${`: write `${NAME}`, or `$$` for a literal `$`".to_owned())?;
            let name = &tail[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{name}}}` is not a valid environment variable reference: names use letters, digits and `_`"
                ));
            }
            let value = lookup(name).ok_or_else(|| {
                format!(
                    "environment variable `{name}` is not set; set it, or write the value (or a `_file` key) instead"
                )
            })?;
            out.push_str(&value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::expand;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_and_escapes() {
        assert_eq!(expand("x${A}y", &env).unwrap(), "xalphay");
        assert_eq!(expand("${A}${A}", &env).unwrap(), "alphaalpha");
        assert_eq!(expand("$${A}", &env).unwrap(), "${A}");
        assert_eq!(expand("cost $5", &env).unwrap(), "cost $5");
        assert_eq!(expand("${EMPTY}", &env).unwrap(), "");
    }

    #[test]
    fn reports_missing_and_malformed() {
        assert!(expand("${NOPE}", &env).unwrap_err().contains("`NOPE` is not set"));
        assert!(expand("${A", &env).unwrap_err().contains("unterminated"));
        assert!(expand("${A-B}", &env).unwrap_err().contains("not a valid"));
    }
}
