//! Configuration errors that point at the file, line, column and key.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

/// One thing wrong with the configuration, located in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Dotted key path, such as `server.public_url` or `providers[0].issuer`.
    pub key: String,
    /// What is wrong and what is expected.
    pub message: String,
}

/// Why a configuration could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read configuration file {path}: {source}; check the path given to --config or BBSSO_CONFIG")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but has problems; every one found is listed.
    #[error("{}", render(.file, .problems))]
    Invalid { file: PathBuf, problems: Vec<Problem> },
}

fn render(file: &std::path::Path, problems: &[Problem]) -> String {
    let mut out = format!(
        "{} has {} problem{}:",
        file.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        out.push_str(&format!("\n  {}:{}:{}: {}", file.display(), p.line, p.column, p));
    }
    out
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Turns a byte offset into a 1-based (line, column) pair.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::line_col;

    #[test]
    fn line_and_column_are_one_based() {
        let src = "a = 1\nbé = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, src.find('=').map(|_| 10).unwrap_or(0)), (2, 4));
        assert_eq!(line_col(src, 10_000), (3, 1));
    }
}
