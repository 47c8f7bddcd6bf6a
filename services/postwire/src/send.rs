//! `postwire send`: one test message through a running service's HTTP API.
//!
//! The URL is `http.listen` of the loaded config (a wildcard address becomes loopback), or
//! `--url`; the API key is `--key` or `POSTWIRE_API_KEY`. Prints the message id and whether it
//! will be DKIM-signed; a refusal prints the problem's detail and each field error.

use anyhow::{bail, Context};
use postwire_config::Settings;
use serde_json::{json, Value};

/// The arguments of `postwire send`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// Recipient; repeat (or separate with commas) for several.
    #[arg(long, required = true, value_delimiter = ',')]
    pub to: Vec<String>,
    #[arg(long)]
    pub subject: String,
    /// The plain-text body.
    #[arg(long)]
    pub text: Option<String>,
    /// The HTML body.
    #[arg(long)]
    pub html: Option<String>,
    /// The sender [default: postwire@<smtp.helo_name>].
    #[arg(long)]
    pub from: Option<String>,
    /// API key with the `send` scope.
    #[arg(long, env = "POSTWIRE_API_KEY", hide_env_values = true)]
    pub key: String,
    /// Base URL of the API [default: from http.listen].
    #[arg(long)]
    pub url: Option<String>,
}

/// Where the service listens, as a URL this machine can reach.
fn base_url(settings: &Settings, url: Option<&str>) -> String {
    if let Some(url) = url {
        return url.trim_end_matches('/').to_string();
    }
    let mut addr = settings.http.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}")
}

pub async fn send(settings: &Settings, args: SendArgs) -> anyhow::Result<()> {
    if args.text.is_none() && args.html.is_none() {
        bail!("give --text, --html or both");
    }
    let base = base_url(settings, args.url.as_deref());
    let from = args.from.unwrap_or_else(|| format!("postwire@{}", settings.smtp.helo_name));
    let mut body = json!({"from": from, "to": args.to, "subject": args.subject});
    if let Some(text) = args.text {
        body["text"] = text.into();
    }
    if let Some(html) = args.html {
        body["html"] = html.into();
    }
    let url = format!("{base}/v1/messages");
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(args.key.trim())
        .json(&body)
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .with_context(|| {
            format!("cannot reach Postwire at {base} (is it running? the URL comes from http.listen, or --url)")
        })?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if status.as_u16() != 202 {
        bail!("{}", refusal(status.as_u16(), &answer));
    }
    let id = answer["id"].as_str().context("the 202 answer has no message id")?;
    let recipients: Vec<String> = answer["recipients"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{} ({})",
                r["email"].as_str().unwrap_or("?"),
                r["status"].as_str().unwrap_or("?")
            )
        })
        .collect();
    println!("queued {id} for {}", recipients.join(", "));
    println!("{}", dkim_line(&answer["dkim"]));
    Ok(())
}

/// `DKIM: signed by d= with s=`, or why not.
fn dkim_line(dkim: &Value) -> String {
    if dkim["signed"].as_bool() == Some(true) {
        format!(
            "DKIM: signed by {} (selector {})",
            dkim["domain"].as_str().unwrap_or("?"),
            dkim["selector"].as_str().unwrap_or("?")
        )
    } else {
        format!(
            "DKIM: not signed: {}",
            dkim["reason"].as_str().unwrap_or("no key for the From domain")
        )
    }
}

/// A problem+json answer as one readable message: status, detail, then each field error.
fn refusal(status: u16, problem: &Value) -> String {
    let title = problem["title"].as_str().unwrap_or("request refused");
    let mut out = format!("the API answered {status} ({title})");
    if let Some(detail) = problem["detail"].as_str().filter(|d| *d != title) {
        out.push_str(&format!(": {detail}"));
    }
    for e in problem["errors"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n  {}: {}",
            e["field"].as_str().unwrap_or("?"),
            e["message"].as_str().unwrap_or("")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_address_is_reached_on_loopback() {
        let mut settings = Settings::default();
        settings.http.listen = "0.0.0.0:9090".parse().unwrap();
        assert_eq!(base_url(&settings, None), "http://127.0.0.1:9090");
        assert_eq!(base_url(&settings, Some("https://mail.example/")), "https://mail.example");
    }

    #[test]
    fn a_refusal_lists_every_field_error() {
        let problem = json!({"title": "Unprocessable Entity", "detail": "invalid request",
            "errors": [{"field": "to[0]", "message": "not an address"}]});
        assert_eq!(
            refusal(422, &problem),
            "the API answered 422 (Unprocessable Entity): invalid request\n  to[0]: not an address"
        );
    }
}
