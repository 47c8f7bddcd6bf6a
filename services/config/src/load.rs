//! Reading settings from a file and the environment.

use std::path::Path;

use crate::settings::Settings;

/// Why settings could not be loaded. The message always names the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

/// Prefix of environment overrides: `POSTWIRE__HTTP__LISTEN=0.0.0.0:8080`.
pub const ENV_PREFIX: &str = "POSTWIRE__";

/// Loads settings from `path` (if it exists, or is required) and the process environment.
///
/// `required` is true when the operator named the file explicitly (`--config`): then a
/// missing file is an error rather than "use the defaults".
pub fn load(path: &Path, required: bool) -> Result<Settings, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => String::new(),
        Err(source) => return Err(ConfigError::Read { path: path.display().to_string(), source }),
    };
    let mut settings = load_with_env(&text, &path.display().to_string(), std::env::vars())?;
    settings.resolve_paths(path.parent().unwrap_or(Path::new("")));
    Ok(settings)
}

/// Loads settings from TOML text alone (no environment): for tests and embedding.
pub fn load_from_str(text: &str) -> Result<Settings, ConfigError> {
    load_with_env(text, "<string>", std::iter::empty())
}

fn load_with_env(
    text: &str,
    origin: &str,
    env: impl Iterator<Item = (String, String)>,
) -> Result<Settings, ConfigError> {
    let mut root: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax {
        path: origin.into(),
        message: e.to_string(),
    })?;
    for (var, value) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else { continue };
        apply_override(&mut root, &var, rest, &value)?;
    }
    let de = toml::Value::Table(root);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        // toml's message may repeat the location on later lines; the key is named already.
        let message =
            e.into_inner().to_string().lines().next().unwrap_or_default().trim().to_string();
        ConfigError::Key { key: if key == "." { "(root)".into() } else { key }, message }
    })
}

/// Sets `section.key` (or a top-level key) from an environment variable. The value is read
/// as a TOML value when it parses as one (`25`, `true`, `["a","b"]`), else as a plain string.
fn apply_override(
    root: &mut toml::Table,
    var: &str,
    rest: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::Env {
            var: var.into(),
            message: "expected POSTWIRE__SECTION__KEY".into(),
        });
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let (last, sections) = parts.split_last().expect("split yields at least one part");
    let mut table = root;
    for section in sections {
        let entry =
            table.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| ConfigError::Env {
            var: var.into(),
            message: format!("`{section}` is not a section"),
        })?;
    }
    table.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_documented_defaults() {
        let s = load_from_str("").unwrap();
        assert_eq!(s.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.smtp.port, 25);
        assert_eq!(s.retry.schedule.len(), 7);
        assert_eq!(s.retry.max_age.std().as_secs(), 48 * 3600);
        assert_eq!(s.limits.max_request_size.0, 25_000_000);
        assert_eq!(s.limits.max_metadata_size.0, 8_000, "8KB");
    }

    #[test]
    fn unknown_key_is_named_in_the_error() {
        let err = load_from_str("[http]\nlisen = \"0.0.0.0:1\"\n").unwrap_err().to_string();
        assert!(err.contains("http") && err.contains("lisen"), "{err}");
    }

    #[test]
    fn bad_value_names_its_dotted_key() {
        let err = load_from_str("[retry]\nmax_age = \"forever\"\n").unwrap_err().to_string();
        assert!(err.contains("retry.max_age"), "{err}");
    }

    #[test]
    fn a_bounce_domain_is_lower_cased_and_a_malformed_one_is_refused_by_key() {
        let s = load_from_str("[bounces]\ndomain = \"Bounces.Example.COM.\"\n").unwrap();
        assert_eq!(s.bounces.domain, "bounces.example.com");
        assert_eq!(load_from_str("").unwrap().bounces.domain, "", "off by default");
        for bad in ["bounces", "b@example.com", "-x.example.com", "bü.example"] {
            let text = format!("[bounces]\ndomain = {bad:?}\n");
            let err = load_from_str(&text).unwrap_err().to_string();
            assert!(err.contains("bounces.domain") && err.contains("not a domain"), "{bad}: {err}");
        }
    }

    #[test]
    fn relative_paths_in_a_file_resolve_against_its_directory() {
        let dir = std::env::temp_dir().join(format!("pw-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("postwire.toml");
        std::fs::write(
            &file,
            "[submission]\ntls_cert = \"certs/smtp.pem\"\ntls_key = \"/abs/key.pem\"\n\
             [[dkim]]\ndomain = \"a.test\"\nselector = \"s\"\nprivate_key = \"dkim/a.pem\"\n",
        )
        .unwrap();
        let s = load(&file, true).unwrap();
        assert_eq!(s.storage.path, dir.join("data"), "the default too");
        assert_eq!(s.submission.tls_cert, dir.join("certs/smtp.pem"));
        assert_eq!(s.submission.tls_key, std::path::PathBuf::from("/abs/key.pem"));
        assert_eq!(s.dkim[0].private_key, dir.join("dkim/a.pem"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn loopback_public_url_on_a_public_listener_and_a_dotless_helo_name_are_warned_about() {
        let quiet = load_from_str(
            "[smtp]\nhelo_name = \"mta.example.com\"\n[http]\nlisten = \"127.0.0.1:8080\"\n",
        )
        .unwrap();
        assert!(quiet.warnings().is_empty(), "{:?}", quiet.warnings());
        let loud = load_from_str(
            "[smtp]\nhelo_name = \"box\"\n[http]\nlisten = \"0.0.0.0:8080\"\n\
             public_url = \"http://127.0.0.1:8080\"\n",
        )
        .unwrap();
        let w = loud.warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("http.public_url") && w[1].starts_with("smtp.helo_name"), "{w:?}");
    }

    #[test]
    fn environment_overrides_file_values() {
        let env = vec![
            ("POSTWIRE__SMTP__PORT".to_string(), "2525".to_string()),
            ("POSTWIRE__DNS__NAMESERVERS".to_string(), "[\"127.0.0.1:5353\"]".to_string()),
            ("POSTWIRE__HTTP__PUBLIC_URL".to_string(), "https://mail.example.com".to_string()),
            ("POSTWIRE__WEBHOOKS__ALLOW_PRIVATE_TARGETS".to_string(), "true".to_string()),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let s = load_with_env("[smtp]\nport = 25\n", "t", env.into_iter()).unwrap();
        assert_eq!(s.smtp.port, 2525);
        assert_eq!(s.dns.nameservers[0].to_string(), "127.0.0.1:5353");
        assert_eq!(s.http.public_url, "https://mail.example.com");
        assert!(s.webhooks.allow_private_targets);
    }

    #[test]
    fn dkim_entries_and_durations_load() {
        let s = load_from_str(
            "[[dkim]]\ndomain = \"example.com\"\nselector = \"s1\"\nalgorithm = \"ed25519-sha256\"\nprivate_key = \"k.pem\"\n[retry]\nschedule = [\"1s\", \"2s\"]\n",
        )
        .unwrap();
        assert_eq!(s.dkim[0].algorithm, crate::DkimAlgorithm::Ed25519Sha256);
        assert_eq!(s.retry.delay_after(1).as_secs(), 1);
        assert_eq!(s.retry.delay_after(5).as_secs(), 2);
    }
}
