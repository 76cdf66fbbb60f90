//! Trace export: `--otlp-endpoint`, `--otlp-protocol`, `--otlp-header`, `--trace-sample-ratio`,
//! `--service-name`, each from the command line, else the config file.

use std::sync::Arc;

use crate::cli::TraceArgs;
use crate::tape::Redactor;
use crate::telemetry::traces::{DEFAULT_SERVICE_NAME, OtlpProtocol, TraceOptions};

use super::{ConfigError, FileConfig, either, invalid, listed, pick};

/// The trace export `p` and `file` ask for; `None` without an endpoint.
pub(super) fn options(
    p: &TraceArgs,
    file: &FileConfig,
) -> Result<Option<TraceOptions>, ConfigError> {
    let Some(endpoint) = either(p.otlp_endpoint.as_ref(), file.otlp_endpoint.as_ref()) else {
        let stray = p.otlp_protocol.is_some()
            || !p.otlp_header.is_empty()
            || p.trace_sample_ratio.is_some()
            || p.service_name.is_some()
            || p.trace_payloads
            || p.otlp_ca.is_some()
            || file.otlp_ca.is_some()
            || file.trace_payloads.is_some()
            || file.service_name.is_some()
            || file.otlp_protocol.is_some()
            || file.otlp_header.is_some()
            || file.trace_sample_ratio.is_some();
        if stray {
            return Err(invalid(
                "--otlp-endpoint",
                "the other trace options need it: where should spans go?".to_owned(),
            ));
        }
        return Ok(None);
    };
    let protocol = match either(p.otlp_protocol.as_ref(), file.otlp_protocol.as_ref()).as_deref() {
        None | Some("http" | "http/protobuf") => OtlpProtocol::Http,
        Some("grpc") => OtlpProtocol::Grpc,
        Some(other) => {
            return Err(invalid(
                "--otlp-protocol",
                format!("{other:?}: expected http or grpc"),
            ));
        }
    };
    let endpoint = check_endpoint(&endpoint, protocol)?;
    let headers = listed(&p.otlp_header, file.otlp_header.clone())
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((name, value))
                if !name.trim().is_empty()
                    && http::HeaderName::from_bytes(name.trim().as_bytes()).is_ok()
                    && http::HeaderValue::from_str(value.trim()).is_ok() =>
            {
                Ok((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            }
            _ => Err(invalid(
                "--otlp-header",
                format!("{pair:?}: expected NAME=VALUE with a valid header name and value"),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let sample_ratio = match pick(
        p.trace_sample_ratio.as_ref(),
        file.trace_sample_ratio.as_ref(),
    ) {
        None => 1.0,
        Some(text) => match text.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => r,
            _ => {
                return Err(invalid(
                    "--trace-sample-ratio",
                    format!("{text:?}: expected a number from 0 to 1"),
                ));
            }
        },
    };
    let ca = match p.otlp_ca.as_ref().or(file.otlp_ca.as_ref()) {
        Some(path) => Some(read_ca(path)?),
        None => None,
    };
    if ca.is_some() && !endpoint.starts_with("https://") {
        return Err(invalid(
            "--otlp-ca",
            format!("{endpoint:?} is not https: a CA would verify nothing"),
        ));
    }
    let service_name = either(p.service_name.as_ref(), file.service_name.as_ref())
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
    if service_name.trim().is_empty() {
        return Err(invalid("--service-name", "must not be empty".to_owned()));
    }
    Ok(Some(TraceOptions {
        endpoint,
        protocol,
        headers,
        ca,
        sample_ratio,
        service_name,
        payloads: (p.trace_payloads || file.trace_payloads == Some(true))
            .then(|| Arc::new(Redactor::default())),
    }))
}

/// `--otlp-ca`'s PEM text, checked to hold at least one certificate.
fn read_ca(path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    use rustls::pki_types::pem::PemObject as _;
    let bad = |why: String| invalid("--otlp-ca", format!("{}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".to_owned()));
    }
    Ok(pem)
}

/// The endpoint as the exporter takes it: an http:// or https:// URL with a host; for HTTP,
/// `/v1/traces` added when it has no path.
fn check_endpoint(text: &str, protocol: OtlpProtocol) -> Result<String, ConfigError> {
    let bad = |why: &str| invalid("--otlp-endpoint", format!("{text:?}: {why}"));
    let uri: http::Uri = text.trim().parse().map_err(|_| bad("not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(bad("expected an http:// or https:// URL"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    let text = text.trim().trim_end_matches('/');
    Ok(match protocol {
        OtlpProtocol::Http if uri.path() == "/" || uri.path().is_empty() => {
            format!("{text}/v1/traces")
        }
        _ => text.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(endpoint: Option<&str>) -> TraceArgs {
        TraceArgs {
            otlp_endpoint: endpoint.map(str::to_owned),
            ..TraceArgs::default()
        }
    }

    #[test]
    #[allow(clippy::float_cmp)] // The ratios are parsed from exact decimal text.
    fn endpoints_defaults_and_refusals() {
        let file = FileConfig::default();
        assert!(options(&args(None), &file).unwrap().is_none());
        let on = options(&args(Some("http://127.0.0.1:4318")), &file)
            .unwrap()
            .unwrap();
        assert_eq!(on.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(on.protocol, OtlpProtocol::Http);
        assert_eq!(on.sample_ratio, 1.0);
        assert_eq!(on.service_name, "shadowcat");
        let grpc = TraceArgs {
            otlp_protocol: Some("grpc".into()),
            otlp_header: vec!["X-Key = abc".into()],
            trace_sample_ratio: Some("0.25".into()),
            ..args(Some("http://collector:4317/"))
        };
        let secure = options(&args(Some("https://collector.example:4318")), &file)
            .unwrap()
            .unwrap();
        assert_eq!(secure.endpoint, "https://collector.example:4318/v1/traces");
        assert_eq!(secure.ca, None);
        let on = options(&grpc, &file).unwrap().unwrap();
        assert_eq!(on.endpoint, "http://collector:4317");
        assert_eq!(on.headers, vec![("x-key".to_owned(), "abc".to_owned())]);
        assert_eq!(on.sample_ratio, 0.25);
        for (bad, says) in [
            (args(Some("ftp://c")), "expected an http:// or https:// URL"),
            (
                TraceArgs {
                    otlp_ca: Some("/nonexistent/ca.pem".into()),
                    ..args(Some("https://c:4318"))
                },
                "/nonexistent/ca.pem",
            ),
            (args(Some("not a url")), "not a URL"),
            (
                TraceArgs {
                    trace_sample_ratio: Some("2".into()),
                    ..args(Some("http://c:4318"))
                },
                "from 0 to 1",
            ),
            (
                TraceArgs {
                    otlp_protocol: Some("udp".into()),
                    ..args(Some("http://c:4318"))
                },
                "expected http or grpc",
            ),
            (
                TraceArgs {
                    otlp_header: vec!["nope".into()],
                    ..args(Some("http://c:4318"))
                },
                "NAME=VALUE",
            ),
        ] {
            let e = options(&bad, &file).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        let stray = FileConfig {
            otlp_protocol: Some("grpc".into()),
            ..FileConfig::default()
        };
        assert!(
            options(&args(None), &stray)
                .unwrap_err()
                .to_string()
                .contains("--otlp-endpoint")
        );
    }
}
