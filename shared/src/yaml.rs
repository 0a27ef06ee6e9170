//! YAML configuration loading with errors that point at the input:
//! `agent.yml:14:5: scrape_configs[2].scrape_timeout: not a valid duration string`.

use std::path::{Path, PathBuf};

/// A configuration file that could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The YAML is malformed or a field has the wrong type, an unknown name or a bad value.
    #[error("{}:{line}:{column}: {field}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        /// Dotted path of the offending field, e.g. `scrape_configs[0].scrape_interval`.
        field: String,
        message: String,
    },
    /// A rule spanning several fields was broken (the location is the file's).
    #[error("{}: {field}: {message}", path.display())]
    Rule {
        path: PathBuf,
        field: String,
        message: String,
    },
}

/// Reads and deserializes a YAML file.
pub fn load<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    parse(path, &text)
}

/// Deserializes YAML text; `path` only labels errors.
pub fn parse<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let (line, column) = inner
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        let (line, column) = refine(text, &field, line, column);
        // serde_yaml prefixes the path and appends " at line X column Y"; ours says both.
        let mut message = inner.to_string();
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        if let Some((head, rest)) = message.split_once(": ")
            && !head.contains(' ')
            && field.starts_with(head.trim_end_matches('.'))
        {
            message = rest.to_owned();
        }
        ConfigError::Invalid {
            path: path.into(),
            line,
            column,
            field: if field == "." { "(root)".into() } else { field },
            message,
        }
    })
}

/// serde_yaml places some errors (bad values of nested fields) at the start of the enclosing
/// mapping; move them to the field's own key when it appears at or after that point.
fn refine(text: &str, field: &str, line: usize, column: usize) -> (usize, usize) {
    let last = field.rsplit('.').next().unwrap_or(field);
    let key = last.split('[').next().unwrap_or(last);
    if key.is_empty() || key == "(root)" {
        return (line, column);
    }
    let pattern = format!("{key}:");
    for (i, l) in text.lines().enumerate().skip(line.saturating_sub(1)) {
        let trimmed = l.trim_start().trim_start_matches("- ").trim_start();
        if trimmed.starts_with(&pattern) {
            return (i + 1, l.len() - trimmed.len() + 1);
        }
        // Inline mappings: `{a: 1, key: x}`.
        if let Some(pos) = l
            .find(&format!(" {pattern}"))
            .or_else(|| l.find(&format!("{{{pattern}")))
        {
            return (i + 1, pos + 2);
        }
    }
    (line, column)
}

impl ConfigError {
    /// A cross-field rule violation.
    pub fn rule(path: &Path, field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Rule {
            path: path.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        items: Vec<Inner>,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        every: crate::duration::PromDuration,
    }

    #[test]
    fn error_names_file_line_column_and_field() {
        let text = "items:\n  - every: 15s\n  - every: fifteen\n";
        let err = parse::<Outer>(Path::new("x.yml"), text).expect_err("bad duration");
        let s = err.to_string();
        assert!(s.starts_with("x.yml:3:"), "{s}");
        assert!(s.contains("items[1].every"), "{s}");
        assert!(s.contains("not a valid duration"), "{s}");

        let err =
            parse::<Outer>(Path::new("x.yml"), "items:\n  - evry: 1s\n").expect_err("unknown");
        let s = err.to_string();
        assert!(s.starts_with("x.yml:2:"), "{s}");
        assert!(s.contains("unknown field `evry`"), "{s}");
    }
}
