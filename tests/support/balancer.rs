//! HAProxy as the load balancer of a cluster of gateways (tests/cluster.rs, and the cluster
//! section of benches/http.rs, which includes this file): the configuration docs/scale-out.md
//! shows, with the addresses given.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port, for HAProxy to listen on.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `n` free loopback ports, all different: each is held until all are found (a port let go
/// can be the next one handed out).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// HAProxy in front of `backends`, round-robin per request, no affinity; a backend that
/// refuses connections is taken out (health checks every 100 ms) and the request sent to
/// another.
pub struct Balancer {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Balancer {
    pub fn start(backends: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        // The configuration docs/scale-out.md shows, with our addresses.
        let doc = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/scale-out.md"),
        )
        .unwrap();
        let block = doc
            .split("```haproxy\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("an haproxy block in docs/scale-out.md");
        let server_options = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("server s0 127.0.0.1:8081 "))
            .expect("a server line in the documented configuration");
        let mut config: String = block
            .lines()
            .filter(|l| !l.trim_start().starts_with("server "))
            .map(|l| l.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}")) + "\n")
            .collect();
        for (i, addr) in backends.iter().enumerate() {
            config.push_str(
                &[
                    "  server s",
                    &i.to_string(),
                    " ",
                    addr,
                    " ",
                    server_options,
                    "\n",
                ]
                .concat(),
            );
        }
        assert!(
            config.contains(&format!("bind 127.0.0.1:{port}")),
            "{config}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let haproxy = binary()
            .expect("HAProxy is not installed: run scripts/test.sh (it installs Debian's haproxy)");
        let child = Command::new(haproxy)
            .args(["-db", "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HAProxy's binary, if it is installed.
pub fn binary() -> Option<&'static str> {
    ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}
