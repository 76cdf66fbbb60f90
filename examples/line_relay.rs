//! The simplest possible stdio relay, used by the end-to-end bench as a floor: two threads,
//! blocking std I/O, no parsing, no tracking. `line_relay <server> [args...]`.
//!
//! Whatever latency this adds over talking to the server directly is the price of one more
//! process in the chain on the machine at hand (pipe hops and scheduler wake-ups), which no
//! proxy can avoid; Shadowcat's own cost is what it adds beyond this.

// A bench fixture: panicking on a broken pipe is the right end for it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

fn main() {
    let mut args = std::env::args_os().skip(1);
    let program = args.next().expect("usage: line_relay <server> [args...]");
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_server = child.stdin.take().unwrap();
    let from_server = child.stdout.take().unwrap();
    let back = std::thread::spawn(move || {
        let mut reader = BufReader::new(from_server);
        let mut out = std::io::stdout().lock();
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).unwrap() > 0 {
            out.write_all(&line).unwrap();
            out.flush().unwrap();
            line.clear();
        }
    });
    let mut input = std::io::stdin().lock();
    let mut line = Vec::new();
    while input.read_until(b'\n', &mut line).unwrap() > 0 {
        to_server.write_all(&line).unwrap();
        line.clear();
    }
    drop(to_server);
    back.join().unwrap();
    let _ = child.wait();
}
