//! The live view: `--ui-listen`, from the command line, else the config file.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::cli::ProxyArgs;
use crate::tape::Redactor;

use super::ListenerToken;
use super::auth::listener_token;
use super::reverse::parse_addr;
use super::{ConfigError, FileConfig, either, invalid};

/// The live view's options, validated.
#[derive(Debug, Clone)]
pub struct UiConfig {
    /// Where the page is served: a loopback address.
    pub listen: SocketAddr,
    /// What is masked in the bodies it shows (`--redact`, an upstream's credentials), as on
    /// tapes; set with the mode's upstream.
    pub masks: Arc<Redactor>,
    /// Where a trace id links to (`--ui-trace-url`): a URL with `{trace_id}` in it.
    pub trace_url: Option<String>,
    /// The token a page or script must present (`--ui-token-file`); required off loopback.
    pub token: Option<ListenerToken>,
}

/// The live view `p` and `file` ask for; `None` unless `--ui-listen` is given (and not `off`).
pub(super) fn options(p: &ProxyArgs, file: &FileConfig) -> Result<Option<UiConfig>, ConfigError> {
    let trace_url = either(p.ui_trace_url.as_ref(), file.ui_trace_url.as_ref());
    let token_file = either(p.ui_token_file.as_ref(), file.ui_token_file.as_ref());
    let Some(text) = either(p.ui_listen.as_ref(), file.ui_listen.as_ref())
        .filter(|a| !a.eq_ignore_ascii_case("off"))
    else {
        for (stray, flag) in [
            (trace_url.is_some(), "--ui-trace-url"),
            (token_file.is_some(), "--ui-token-file"),
        ] {
            if stray {
                return Err(invalid(
                    flag,
                    "belongs to the live view; it needs --ui-listen".to_owned(),
                ));
            }
        }
        return Ok(None);
    };
    if let Some(url) = &trace_url {
        let web = url.starts_with("http://") || url.starts_with("https://");
        if !web || !url.contains("{trace_id}") || url.parse::<http::Uri>().is_err() {
            return Err(invalid(
                "--ui-trace-url",
                format!(
                    "{url:?}: expected an http(s) URL with {{trace_id}} in it, e.g. \
                     http://127.0.0.1:16686/trace/{{trace_id}}"
                ),
            ));
        }
    }
    let listen = parse_addr(&text, "--ui-listen")?;
    let token = listener_token(
        token_file.as_deref(),
        Some(listen),
        ("--ui-listen", "--ui-token-file"),
        &format!(
            "the live view shows every message; or listen on loopback, e.g. 127.0.0.1:{port}, \
             and reach it through an SSH tunnel: ssh -L {port}:127.0.0.1:{port} HOST",
            port = listen.port()
        ),
    )?;
    Ok(Some(UiConfig {
        listen,
        masks: Arc::new(Redactor::default()),
        trace_url,
        token,
    }))
}
