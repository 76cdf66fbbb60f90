//! The live view in a real browser: Debian's Chromium, headless, driven over WebDriver by
//! ChromeDriver (both installed by scripts/test.sh), against `shadowcat reverse --ui-listen`
//! with the Python SDK (mcp 2.3.0) as the client. The page opens before the client runs, and
//! must show its session and messages as they happen, filter them, show a message's body and
//! what a rule did, and step through the session's tape. Screenshots go to
//! `target/ui-screenshots/` for a person to look at (and, with SHADOWCAT_UI_SCREENSHOTS=docs,
//! to docs/ui/, where docs/ui.md shows them).
#![allow(
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types
)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use support::{Gateway, WAIT, peers, python};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

const RULES: &str = r#"
version: 1
rules:
  - name: no-add
    match: {tool: add}
    block: {code: -32001, message: adding is off}
"#;

/// ChromeDriver on a free loopback port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Self {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: scripts/test.sh installs Debian's chromium and chromium-driver"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr = format!("127.0.0.1:{port}");
        let started = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(started.elapsed() < WAIT, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            url: format!("http://{addr}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1500,1000"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session from chromedriver")
}

/// Waits until `check` holds (polling the page), or fails with what it saw last.
async fn until<F, Fut>(what: &str, mut check: F) -> String
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<String>>,
{
    let started = Instant::now();
    loop {
        if let Some(seen) = check().await {
            return seen;
        }
        assert!(started.elapsed() < WAIT * 2, "the page never showed {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text(page: &Client, css: &str) -> String {
    match page.find(Locator::Css(css)).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The rows of table `css` as their cells' text.
async fn rows(page: &Client, css: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for row in page
        .find_all(Locator::Css(&format!("{css} tbody tr")))
        .await
        .unwrap()
    {
        let mut cells = Vec::new();
        for cell in row.find_all(Locator::Css("td")).await.unwrap() {
            cells.push(cell.text().await.unwrap_or_default());
        }
        out.push(cells);
    }
    out
}

fn screenshots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(page: &Client, name: &str) {
    let png = page.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    std::fs::write(screenshots_dir().join(name), &png).unwrap();
    if name != "live.png" && std::env::var("SHADOWCAT_UI_SCREENSHOTS").as_deref() == Ok("docs") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ui");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join(name), &png).unwrap();
    }
}

/// The Python SDK client calling `tool` `calls` times through the gateway at `url`.
fn sdk_calls(url: &str, tool: &str, calls: usize) -> serde_json::Value {
    let out = Command::new(python("2.3.0"))
        .arg(peers().join("ratelimit_client.py"))
        .args(["--calls", &calls.to_string(), "--tool", tool, "--url", url])
        .output()
        .expect("run the SDK client");
    assert!(
        out.status.success(),
        "the SDK client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the client's summary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_sees_an_sdk_session_live_and_steps_through_its_tape() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, RULES).unwrap();
    let tapes = dir.path().join("tapes");
    std::fs::create_dir(&tapes).unwrap();
    // History on (in a directory of this test's): the SDK clients end their sessions, and the
    // page lists ended sessions from the history store.
    let gateway = Gateway::fixture(&[
        "--session-store",
        "sqlite",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--ui-listen",
        "127.0.0.1:0",
        "--rules",
        rules.to_str().unwrap(),
        "--record",
        tapes.to_str().unwrap(),
    ]);
    let ui = gateway
        .stderr_text()
        .split("live view on http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("the live view's address in the log")
        .to_owned();
    let driver = Driver::start();
    let page = browser(&driver).await;
    page.goto(&format!("http://{ui}/")).await.unwrap();
    until("its feed connected", || async {
        (text(&page, "#status").await == "live").then_some(String::new())
    })
    .await;

    // The client runs while the page is open.
    let url = gateway.url();
    let echoed = tokio::task::spawn_blocking({
        let url = url.clone();
        move || sdk_calls(&url, "echo", 3)
    })
    .await
    .unwrap();
    assert_eq!(echoed["calls"].as_array().unwrap().len(), 3, "{echoed}");
    let blocked = tokio::task::spawn_blocking(move || sdk_calls(&url, "add", 1))
        .await
        .unwrap();
    assert_eq!(blocked["calls"][0]["error"]["code"], -32001, "{blocked}");

    // Its messages, live: three echo calls and their answers, the blocked add.
    let messages = until("the calls", || async {
        let rows = rows(&page, "#messages").await;
        let calls = rows
            .iter()
            .filter(|r| r.get(4).map(String::as_str) == Some("tools/call"))
            .count();
        (calls >= 7).then(|| format!("{rows:?}"))
    })
    .await;
    assert!(messages.contains("echo"), "{messages}");
    let table = rows(&page, "#messages").await;
    let answer = table
        .iter()
        .find(|r| r[3] == "response" && r[5] == "echo")
        .unwrap_or_else(|| panic!("no echo answer named by its request: {table:?}"));
    assert!(
        answer[8].ends_with("µs") || answer[8].ends_with("ms"),
        "{answer:?}"
    );
    let refused = table
        .iter()
        .find(|r| r[5] == "add")
        .unwrap_or_else(|| panic!("no add call: {table:?}"));
    assert!(refused[9].contains("answered"), "{refused:?}");
    assert!(refused[9].contains("block (no-add)"), "{refused:?}");

    // Its sessions: two SDK sessions (one per client run), by digest.
    let sessions = until("the sessions", || async {
        let rows = rows(&page, "#sessions").await;
        (rows.len() >= 2).then(|| format!("{rows:?}"))
    })
    .await;
    assert!(sessions.contains("s-"), "{sessions}");
    assert!(
        sessions.contains("mcp"),
        "the SDK's client name: {sessions}"
    );
    screenshot(&page, "live.png").await;

    // A message's body and what the rule did.
    page.find(Locator::Css("#messages tbody tr.acted"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let detail = text(&page, "#detail").await;
    assert!(detail.contains("rule no-add"), "{detail}");
    assert!(detail.contains("adding is off"), "{detail}");
    assert!(detail.contains("\"name\": \"add\""), "{detail}");
    screenshot(&page, "message.png").await;

    // Filters: the search narrows to the add call; the error filter to errors.
    page.find(Locator::Css("#search"))
        .await
        .unwrap()
        .send_keys("add")
        .await
        .unwrap();
    let narrowed = until("the search applied", || async {
        let rows = rows(&page, "#messages").await;
        (!rows.is_empty() && rows.iter().all(|r| r.join(" ").contains("add")))
            .then(|| format!("{rows:?}"))
    })
    .await;
    assert!(!narrowed.contains("\"echo\""), "{narrowed}");
    page.find(Locator::Css("#search"))
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    page.execute(
        "const s = document.getElementById('status-filter'); s.value = 'acted'; \
         s.dispatchEvent(new Event('input'));",
        vec![],
    )
    .await
    .unwrap();
    let acted = rows(&page, "#messages").await;
    assert_eq!(acted.len(), 1, "{acted:?}");
    assert_eq!(acted[0][5], "add");

    // Export the first session's messages as a tape: `shadowcat tape show` reads it.
    let first_session = table[0][1].clone();
    let exported = page
        .execute(
            "return window.shadowcatExport(arguments[0]);",
            vec![json!(first_session)],
        )
        .await
        .unwrap();
    assert_eq!(exported["skipped"], 0, "{exported}");
    let exported_tape = dir.path().join("exported.jsonl");
    std::fs::write(&exported_tape, exported["text"].as_str().unwrap()).unwrap();
    let shown = Command::new(support::shadowcat())
        .args(["tape", "show"])
        .arg(&exported_tape)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success(),
        "{listing}{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert_eq!(
        listing.matches("tools/call").count(),
        6,
        "three calls and their answers:\n{listing}"
    );

    // The rule goes (the file is watched); a third session's add now reaches the server,
    // whose answer differs from the rule's: comparing the two sessions' tapes shows it.
    std::fs::write(&rules, "version: 1\nrules: []\n").unwrap();
    let reloaded = Instant::now();
    while !gateway.stderr_text().contains("rules reloaded") {
        assert!(reloaded.elapsed() < WAIT, "the rules were not reloaded");
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = gateway.url();
    let unblocked = tokio::task::spawn_blocking(move || sdk_calls(&url, "add", 1))
        .await
        .unwrap();
    assert_ne!(
        unblocked["calls"][0]["error"]["code"], -32001,
        "{unblocked}"
    );

    // The tapes: open the first session's and step through it.
    page.find(Locator::Css("#tab-tapes"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until("the tapes", || async {
        let rows = rows(&page, "#tape-list").await;
        (rows.len() >= 3).then(|| format!("{rows:?}"))
    })
    .await;
    // Newest first: the blocked add's session is the second row, the first session's the last.
    let tape_rows = page
        .find_all(Locator::Css("#tape-list tbody tr"))
        .await
        .unwrap();
    let newest = tape_rows[0].attr("data-file").await.unwrap().unwrap();
    tape_rows[1].click().await.unwrap();
    until("the blocked session's tape", || async {
        let pos = text(&page, "#tape-pos").await;
        pos.starts_with("1 / ").then_some(pos)
    })
    .await;
    page.execute(
        "const s = document.getElementById('compare-with'); s.value = arguments[0]; \
         s.dispatchEvent(new Event('input'));",
        vec![json!(newest)],
    )
    .await
    .unwrap();
    let compared = until("the comparison", || async {
        let summary = text(&page, "#compare-summary").await;
        (!summary.is_empty()).then_some(summary)
    })
    .await;
    assert!(compared.contains("1 changed"), "{compared}");
    let changes = text(&page, "#compare").await;
    assert!(changes.contains("changed: tools/call add"), "{changes}");
    assert!(changes.contains("adding is off"), "{changes}");
    screenshot(&page, "compare.png").await;
    let oldest = page
        .find_all(Locator::Css("#tape-list tbody tr"))
        .await
        .unwrap()
        .pop()
        .unwrap();
    let oldest_file = oldest.attr("data-file").await.unwrap().unwrap();
    oldest.click().await.unwrap();
    until("the first session's tape", || async {
        let title = text(&page, "#tape-title").await;
        title.contains(&oldest_file).then_some(title)
    })
    .await;
    let first = text(&page, "#tape-detail").await;
    assert!(first.contains("request"), "{first}");
    page.find(Locator::Css("#tape-next"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let pos = text(&page, "#tape-pos").await;
    assert!(pos.starts_with("2 / "), "{pos}");
    let second = text(&page, "#tape-detail").await;
    assert_ne!(first, second, "stepping shows the next message");
    assert!(second.contains("\"jsonrpc\""), "{second}");
    screenshot(&page, "tape.png").await;
    page.close().await.unwrap();
}
