//! Plans carry no secrets: a value that looks like one is refused, naming the field and
//! never echoing the value (the message may end up in CI logs).

use std::sync::OnceLock;

use regex::RegexSet;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::problem::Problem;
use super::reader::Ctx;

fn value_patterns() -> &'static RegexSet {
    static SET: OnceLock<RegexSet> = OnceLock::new();
    SET.get_or_init(|| {
        RegexSet::new([
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY", // PEM / OpenSSH private keys
            r"\bsk-[A-Za-z0-9_\-]{16,}",         // OpenAI / Anthropic style keys
            r"\b(ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,}", // GitHub tokens
            r"\bgithub_pat_[A-Za-z0-9_]{20,}",
            r"\bAKIA[0-9A-Z]{16}\b",            // AWS access key ids
            r"\bxox[abprs]-[A-Za-z0-9\-]{10,}", // Slack
            r"\bhf_[A-Za-z0-9]{30,}",           // Hugging Face
            r"\bsecret_[A-Za-z0-9_\-]{20,}",    // Lambda Cloud API keys
            r"\brpa_[A-Za-z0-9]{20,}",          // RunPod API keys
            r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.", // JWTs
            r"[a-z][a-z0-9+.\-]*://[^/\s:@]+:[^/\s@]+@", // passwords inside URLs
        ])
        .expect("secret patterns are valid regexes")
    })
}

/// Key names whose value is a credential whatever it looks like.
fn is_secret_key(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    let words: Vec<&str> = lower.split(['_', '-', '.']).collect();
    let has = |w: &str| words.contains(&w);
    let joined = lower.replace(['_', '-'], "");
    has("password")
        || has("passwd")
        || has("passphrase")
        || has("secret")
        || has("token")
        || has("apikey")
        || has("credentials")
        || joined.contains("apikey")
        || joined.contains("accesskey")
        || joined.contains("privatekey")
        || joined.contains("secretkey")
}

pub fn looks_like_secret(value: &str) -> bool {
    value_patterns().is_match(value)
}

/// Walk the whole document, known fields and unknown ones alike.
pub fn scan(root: &DeTable<'_>, cx: &mut Ctx) {
    scan_table(root, "", cx);
}

fn scan_table(table: &DeTable<'_>, path: &str, cx: &mut Ctx) {
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        let field = if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        };
        let non_empty_scalar = matches!(value.get_ref(), DeValue::String(s) if !s.trim().is_empty())
            || matches!(value.get_ref(), DeValue::Integer(_));
        if is_secret_key(name) && non_empty_scalar {
            cx.secret_keys.insert(key.span().start);
            cx.push(refusal(&field, key.span(), "is named like a credential"));
            continue;
        }
        scan_value(value, &field, cx);
    }
}

fn scan_value(value: &Spanned<DeValue<'_>>, field: &str, cx: &mut Ctx) {
    match value.get_ref() {
        DeValue::String(s) if looks_like_secret(s) => {
            cx.push(refusal(
                field,
                value.span(),
                "holds a value that looks like a secret",
            ));
        }
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                scan_value(item, &format!("{field}[{i}]"), cx);
            }
        }
        DeValue::Table(t) => scan_table(t, field, cx),
        _ => {}
    }
}

fn refusal(field: &str, span: std::ops::Range<usize>, what: &str) -> Problem {
    Problem::error(field, span, format!("{what} (value not shown)"))
        .why("plans are shared in git; a secret in one is leaked to everyone who can read the repository")
        .fix("remove it and rotate it if it was ever committed; keys come from environment variables (LAMBDA_API_KEY, RUNPOD_API_KEY, VAST_API_KEY) or the 0600 file $XDG_CONFIG_HOME/gpuctl/credentials.toml, SSH keys from `access.identity_file` (a path) or ssh-agent")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_common_secrets() {
        assert!(looks_like_secret("sk-abcdefghijklmnopqrstuvwx"));
        assert!(looks_like_secret(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nabc"
        ));
        assert!(looks_like_secret("https://user:hunter2@example.com/x"));
        assert!(!looks_like_secret("~/.ssh/id_ed25519"));
        assert!(!looks_like_secret(
            "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"
        ));
        assert!(!looks_like_secret("Qwen/Qwen2.5-0.5B-Instruct"));
    }

    #[test]
    fn secret_key_names() {
        assert!(is_secret_key("api_key"));
        assert!(is_secret_key("apiKey"));
        assert!(is_secret_key("hf_token"));
        assert!(is_secret_key("password"));
        assert!(!is_secret_key("max_tokens"));
        assert!(!is_secret_key("host_key"));
        assert!(!is_secret_key("identity_file"));
    }
}
