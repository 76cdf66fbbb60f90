//! The HTTP upstream's credentials (`--bearer-token-env`, `--bearer-token-file`, the
//! `--upstream-token-url` client-credentials grant): validated here, kept current by
//! [`crate::transport::credentials`]. At most one source, and not beside an `Authorization`
//! header given by hand.

use std::path::PathBuf;

use super::{ConfigError, FileConfig, either, invalid, listed};
use crate::cli::UpstreamArgs;
use crate::transport::credentials::{Grant, Source};

/// Most `--upstream-scope`s.
const MAX_SCOPES: usize = 32;
/// Largest client secret file.
const MAX_SECRET_FILE: u64 = 16 * 1024;

/// The upstream's credentials, given `url` (the resource a granted token is for) and the
/// `headers` given by hand: a static bearer token is added to them; one that changes is the
/// [`Source`] returned.
pub(super) fn credentials(
    args: &UpstreamArgs,
    file: &FileConfig,
    url: &http::Uri,
    headers: &mut http::HeaderMap,
) -> Result<Option<Source>, ConfigError> {
    let env = either(
        args.bearer_token_env.as_ref(),
        file.bearer_token_env.as_ref(),
    );
    let token_file = either(
        args.bearer_token_file.as_ref(),
        file.bearer_token_file.as_ref(),
    );
    let grant = grant(args, file, url)?;
    let given: Vec<&str> = [
        (env.is_some(), "--bearer-token-env"),
        (token_file.is_some(), "--bearer-token-file"),
        (grant.is_some(), "--upstream-token-url"),
        (
            headers.contains_key(http::header::AUTHORIZATION),
            "an Authorization header",
        ),
    ]
    .into_iter()
    .filter_map(|(set, what)| set.then_some(what))
    .collect();
    if let [first, second, ..] = given[..] {
        return Err(invalid(
            first,
            format!("{first} and {second} both give the upstream's credentials; use one"),
        ));
    }
    if let Some(var) = env {
        headers.insert(http::header::AUTHORIZATION, bearer_token(&var)?);
        return Ok(None);
    }
    if let Some(path) = &token_file {
        std::fs::File::open(path).map_err(|e| {
            invalid(
                "--bearer-token-file",
                format!("cannot read the token file {}: {e}", path.display()),
            )
        })?;
    }
    let exchange = args.upstream_token_exchange || file.upstream_token_exchange == Some(true);
    match (exchange, grant) {
        (true, None) => Err(invalid(
            "--upstream-token-exchange",
            "--upstream-token-exchange needs --upstream-token-url".into(),
        )),
        (true, Some(grant)) => Ok(Some(Source::Exchange(grant))),
        (false, grant) => Ok(token_file.map(Source::File).or(grant.map(Source::Grant))),
    }
}

/// Whether any credential option is given (they need an HTTP server).
pub(super) fn any_given(args: &UpstreamArgs) -> Option<&'static str> {
    [
        (args.bearer_token_env.is_some(), "--bearer-token-env"),
        (args.bearer_token_file.is_some(), "--bearer-token-file"),
        (args.upstream_token_url.is_some(), "--upstream-token-url"),
        (args.upstream_client_id.is_some(), "--upstream-client-id"),
        (
            args.upstream_client_secret_file.is_some(),
            "--upstream-client-secret-file",
        ),
        (!args.upstream_scope.is_empty(), "--upstream-scope"),
        (args.upstream_token_exchange, "--upstream-token-exchange"),
    ]
    .into_iter()
    .find_map(|(set, flag)| set.then_some(flag))
}

/// The client-credentials grant, if `--upstream-token-url` asks for one.
fn grant(
    args: &UpstreamArgs,
    file: &FileConfig,
    url: &http::Uri,
) -> Result<Option<Grant>, ConfigError> {
    let token_url = either(
        args.upstream_token_url.as_ref(),
        file.upstream_token_url.as_ref(),
    );
    let client_id = either(
        args.upstream_client_id.as_ref(),
        file.upstream_client_id.as_ref(),
    );
    let secret_file = either(
        args.upstream_client_secret_file.as_ref(),
        file.upstream_client_secret_file.as_ref(),
    );
    let scopes = listed(&args.upstream_scope, file.upstream_scope.clone());
    let Some(token_url) = token_url else {
        for (given, flag) in [
            (client_id.is_some(), "--upstream-client-id"),
            (secret_file.is_some(), "--upstream-client-secret-file"),
            (!scopes.is_empty(), "--upstream-scope"),
        ] {
            if given {
                return Err(invalid(flag, format!("{flag} needs --upstream-token-url")));
            }
        }
        return Ok(None);
    };
    let token_url = token_url.trim();
    let parsed: http::Uri = token_url
        .parse()
        .map_err(|e| invalid("--upstream-token-url", format!("{token_url:?}: {e}")))?;
    if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.host().is_none() {
        return Err(invalid(
            "--upstream-token-url",
            format!("{token_url:?}: expected an http:// or https:// URL"),
        ));
    }
    let loopback = parsed.host().is_some_and(|h| {
        h == "localhost"
            || h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    if parsed.scheme_str() == Some("http") && !loopback {
        return Err(invalid(
            "--upstream-token-url",
            format!(
                "{token_url:?}: the client secret (and callers' tokens, for an exchange) would cross the network in clear text; use https://"
            ),
        ));
    }
    let Some(client_id) = client_id.filter(|id| !id.trim().is_empty()) else {
        return Err(invalid(
            "--upstream-client-id",
            "--upstream-token-url needs --upstream-client-id".into(),
        ));
    };
    let Some(secret_file) = secret_file else {
        return Err(invalid(
            "--upstream-client-secret-file",
            "--upstream-token-url needs --upstream-client-secret-file".into(),
        ));
    };
    crate::session::principal::check_scopes(&scopes, MAX_SCOPES)
        .map_err(|why| invalid("--upstream-scope", why))?;
    Ok(Some(Grant {
        token_url: parsed,
        client_id: client_id.trim().to_owned(),
        client_secret: read_secret(&secret_file)?,
        scopes,
        resource: resource_of(url),
    }))
}

/// The resource a token is asked for: the upstream's URL without any user or password in it.
fn resource_of(url: &http::Uri) -> String {
    let text = url.to_string();
    match (url.scheme_str(), url.authority()) {
        (Some(scheme), Some(authority)) if authority.as_str().contains('@') => {
            let host = authority.as_str().rsplit('@').next().unwrap_or_default();
            let path = url.path_and_query().map_or("/", |p| p.as_str());
            format!("{scheme}://{host}{path}")
        }
        _ => text,
    }
}

/// The client secret in `path`: its first line, trimmed.
fn read_secret(path: &PathBuf) -> Result<String, ConfigError> {
    let flag = "--upstream-client-secret-file";
    let shown = path.display();
    let len = std::fs::metadata(path)
        .map_err(|e| invalid(flag, format!("{shown}: {e}")))?
        .len();
    if len > MAX_SECRET_FILE {
        return Err(invalid(
            flag,
            format!("{shown} is larger than {MAX_SECRET_FILE} bytes"),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| invalid(flag, format!("{shown}: {e}")))?;
    let secret = text.lines().next().unwrap_or_default().trim();
    if secret.is_empty() {
        return Err(invalid(flag, format!("{shown} is empty")));
    }
    Ok(secret.to_owned())
}

/// The `Authorization` value for the bearer token in the environment variable `var`, marked
/// sensitive.
fn bearer_token(var: &str) -> Result<http::HeaderValue, ConfigError> {
    let flag = "--bearer-token-env";
    let token = std::env::var(var).map_err(|_| {
        invalid(
            flag,
            format!("the environment variable {var} is not set (or not UTF-8)"),
        )
    })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(invalid(
            flag,
            format!("the environment variable {var} is empty"),
        ));
    }
    let mut value = http::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        invalid(
            flag,
            format!("the token in {var} is not a valid header value"),
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resource_leaves_out_credentials_in_the_url() {
        let url: http::Uri = "https://user:pw@mcp.example.com:8443/mcp?x=1"
            .parse()
            .unwrap();
        assert_eq!(resource_of(&url), "https://mcp.example.com:8443/mcp?x=1");
        let url: http::Uri = "http://127.0.0.1:9/mcp".parse().unwrap();
        assert_eq!(resource_of(&url), "http://127.0.0.1:9/mcp");
    }
}
