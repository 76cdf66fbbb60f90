//! A server's command line as it may be written down (tape headers, session records, traces,
//! logs): arguments that look like secrets masked, and those secrets, to be masked in messages
//! too.
//!
//! An argument looks like a secret when it follows, or is the value of, an option or variable
//! whose name says so (`--api-key X`, `--token=X`, `GITHUB_TOKEN=X`), or when its value has the
//! shape of a credential (`ghp_…`, `sk-…`, a JWT, `Bearer …`, a URL's password or a secret query
//! parameter). Over-masking a path or a flag is the price of never writing a token down.

use std::ffi::OsString;
use std::fmt::Write as _;

use super::MASK;

/// Secrets shorter than this are masked in the command line but not looked for in messages,
/// where they would mask common words and numbers.
const SHORTEST_ECHOED: usize = 8;

/// Whether an option or variable named `name` (`--api-key`, `GITHUB_TOKEN`, `clientSecret`)
/// holds a secret.
pub fn secret_name(name: &str) -> bool {
    const PARTS: [&str; 9] = [
        "token",
        "secret",
        "passw",
        "apikey",
        "api_key",
        "api-key",
        "credential",
        "cookie",
        "bearer",
    ];
    const WORDS: [&str; 6] = ["key", "auth", "pat", "pwd", "pass", "authorization"];
    let name = name.trim_start_matches('-').to_ascii_lowercase();
    PARTS.iter().any(|part| name.contains(part))
        || name
            .split(['-', '_', '.'])
            .any(|word| WORDS.contains(&word))
}

/// Whether `value` has the shape of a credential whatever it is called.
pub fn secret_value(value: &str) -> bool {
    const PREFIXES: [&str; 12] = [
        "sk-",
        "sk_live_",
        "rk_live_",
        "ghp_",
        "gho_",
        "ghu_",
        "ghs_",
        "ghr_",
        "github_pat_",
        "glpat-",
        "xoxb-",
        "xoxp-",
    ];
    let jwt = value.starts_with("eyJ") && value.split('.').count() == 3;
    let aws = value.len() == 20
        && value.starts_with("AKIA")
        && value
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    let bearer = value
        .get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("bearer "));
    jwt || aws || bearer || PREFIXES.iter().any(|p| value.starts_with(p))
}

/// A command line, its secret-looking values masked, and those values.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Command {
    /// What may be written: `npx server --api-key [REDACTED]`.
    pub shown: String,
    /// The values masked in it, long enough to be looked for in messages too.
    pub secrets: Vec<String>,
}

/// `program` and `args` as they may be written, and the secrets masked in them; `env` (the
/// server's extra variables) adds the values of those whose names look secret to the secrets.
pub fn command(program: &OsString, args: &[OsString], env: &[(OsString, OsString)]) -> Command {
    let mut out = Command::default();
    let mut words = vec![program.to_string_lossy().into_owned()];
    let mut follows_secret_flag = false;
    for arg in args {
        let arg = arg.to_string_lossy();
        let word = if follows_secret_flag && !arg.starts_with('-') {
            out.keep(&arg);
            MASK.to_owned()
        } else {
            out.shown_arg(&arg)
        };
        follows_secret_flag = arg.starts_with('-') && !arg.contains('=') && secret_name(&arg);
        words.push(word);
    }
    for (name, value) in env {
        let value = value.to_string_lossy();
        if secret_name(&name.to_string_lossy()) || secret_value(&value) {
            out.keep(&value);
        }
    }
    out.shown = words.join(" ");
    // Longest first, so that a whole value is masked before a part of it.
    out.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.secrets.dedup();
    out
}

/// A command line already joined (a tape's `upstream`), masked word by word as [`command`]
/// masks arguments.
pub fn shown_line(line: &str) -> String {
    let mut words = line.split(' ').map(OsString::from);
    let Some(program) = words.next() else {
        return String::new();
    };
    let args: Vec<OsString> = words.collect();
    command(&program, &args, &[]).shown
}

impl Command {
    fn keep(&mut self, secret: &str) {
        if secret.len() >= SHORTEST_ECHOED {
            self.secrets.push(secret.to_owned());
        }
    }

    /// One argument as it may be shown.
    fn shown_arg(&mut self, arg: &str) -> String {
        if secret_value(arg) {
            self.keep(arg);
            return MASK.to_owned();
        }
        if let Some(url) = self.shown_url(arg) {
            return url;
        }
        match arg.split_once('=') {
            Some((name, value)) if secret_name(name) || secret_value(value) => {
                self.keep(value);
                format!("{name}={MASK}")
            }
            _ => arg.to_owned(),
        }
    }

    /// A URL argument without its password and secret query values (`None`: not a URL, or
    /// nothing to mask).
    fn shown_url(&mut self, arg: &str) -> Option<String> {
        let (scheme, rest) = arg.split_once("://")?;
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return None;
        }
        let mut shown = format!("{scheme}://");
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let mut changed = false;
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, password)) => {
                    self.keep(password);
                    let _ = write!(shown, "{user}:{MASK}@{host}");
                    changed = true;
                }
                None => shown.push_str(authority),
            },
            None => shown.push_str(authority),
        }
        let (before_query, query) = match tail.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (tail, None),
        };
        shown.push_str(before_query);
        if let Some(query) = query {
            let (query, fragment) = match query.split_once('#') {
                Some((query, fragment)) => (query, Some(fragment)),
                None => (query, None),
            };
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, value)) if secret_name(key) || secret_value(value) => {
                        self.keep(value);
                        changed = true;
                        format!("{key}={MASK}")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            shown.push('?');
            shown.push_str(&pairs.join("&"));
            if let Some(fragment) = fragment {
                shown.push('#');
                shown.push_str(fragment);
            }
        }
        changed.then_some(shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(line: &str, env: &[(&str, &str)]) -> Command {
        let mut words = line.split(' ').map(OsString::from);
        let program = words.next().unwrap();
        let args: Vec<OsString> = words.collect();
        let env: Vec<(OsString, OsString)> = env
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        command(&program, &args, &env)
    }

    #[test]
    fn secret_looking_arguments_are_masked_and_the_rest_kept() {
        let c = shown(
            "npx -y @org/server --api-key abcdefgh123 --port 8080 --token=tok-12345678 \
             GITHUB_TOKEN=x1y2z3w4v5 --verbose ghp_0123456789abcdef eyJhbGciOi.eyJzdWIi.c2ln \
             https://ann:pa55word99@example.com/mcp?apiKey=k3y-k3y-k3y&mode=fast#top \
             --password short --config /etc/server.toml",
            &[
                ("OPENAI_API_KEY", "sk-abcdefghijkl"),
                ("HOME", "/home/ann"),
                ("X", "AKIAABCDEFGHIJKLMNOP"),
            ],
        );
        assert_eq!(
            c.shown,
            "npx -y @org/server --api-key [REDACTED] --port 8080 --token=[REDACTED] \
             GITHUB_TOKEN=[REDACTED] --verbose [REDACTED] [REDACTED] \
             https://ann:[REDACTED]@example.com/mcp?apiKey=[REDACTED]&mode=fast#top \
             --password [REDACTED] --config /etc/server.toml"
        );
        for secret in [
            "abcdefgh123",
            "tok-12345678",
            "x1y2z3w4v5",
            "ghp_0123456789abcdef",
            "pa55word99",
            "k3y-k3y-k3y",
            "sk-abcdefghijkl",
            "AKIAABCDEFGHIJKLMNOP",
        ] {
            assert!(
                c.secrets.iter().any(|s| s == secret),
                "{secret}: {:?}",
                c.secrets
            );
        }
        // Too short to look for in messages; not an environment value with an ordinary name.
        assert!(!c.secrets.iter().any(|s| s == "short" || s == "/home/ann"));
        // Longest first.
        assert!(c.secrets.windows(2).all(|w| w[0].len() >= w[1].len()));
    }

    #[test]
    fn a_written_line_is_masked_as_its_arguments_would_be() {
        assert_eq!(
            shown_line("server --token abcdefgh http://127.0.0.1:9/mcp"),
            "server --token [REDACTED] http://127.0.0.1:9/mcp"
        );
        assert_eq!(shown_line(""), "");
    }

    #[test]
    fn an_ordinary_command_line_is_kept_as_it_is() {
        for line in [
            "python server.py --port 8080 -v",
            "uvx mcp-server-fetch --ignore-robots-txt https://example.com/docs?page=2",
            "node dist/index.js --keyboard-layout us --author ann",
        ] {
            let c = shown(line, &[]);
            assert_eq!(c.shown, line);
            assert!(c.secrets.is_empty(), "{line}: {:?}", c.secrets);
        }
    }
}
