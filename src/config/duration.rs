//! Durations written as `"90s"`, `"15m"`, `"8h"`, `"30d"` (and sums such as `"1h30m"`).

use std::time::Duration;

/// Parses a duration; the error says what is expected.
pub fn parse(input: &str) -> Result<Duration, String> {
    let expected = || {
        format!(
            "expected a duration such as \"90s\", \"15m\", \"8h\" or \"30d\" (units ms, s, m, h, d), got \"{input}\""
        )
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(expected());
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(expected());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| expected())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let millis_per_unit: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(expected()),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(millis_per_unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration \"{input}\" is too large"))?;
    }
    Ok(Duration::from_millis(total))
}

#[cfg(test)]
mod tests {
    use super::parse;
    use std::time::Duration;

    #[test]
    fn accepts_units_and_sums() {
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse("8h").unwrap(), Duration::from_secs(8 * 3600));
        assert_eq!(parse("30d").unwrap(), Duration::from_secs(30 * 86400));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "10",
            "s",
            "10x",
            "1.5h",
            "-5s",
            "10 s",
            "h1",
            "99999999999999999999d",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
