//! The floor for `benches/http.rs`: the simplest possible HTTP-level hop, a TCP relay that copies
//! bytes between each client connection and a new connection to the upstream (two blocking
//! threads per connection, no parsing). Whatever it adds to a round trip, any proxy process in
//! the chain pays on this machine, whatever it does.
//!
//! Usage: `tcp_relay <upstream host:port>`; binds 127.0.0.1 on a free port and prints `PORT <n>`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::net::{TcpListener, TcpStream};

fn main() {
    let upstream = std::env::args()
        .nth(1)
        .expect("usage: tcp_relay <host:port>");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    println!("PORT {}", listener.local_addr().unwrap().port());
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect(&upstream) else {
            continue;
        };
        client.set_nodelay(true).unwrap();
        server.set_nodelay(true).unwrap();
        let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let (mut s_read, mut c_write) = (server, client);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut c_read, &mut s_write);
            let _ = s_write.shutdown(std::net::Shutdown::Write);
        });
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut s_read, &mut c_write);
            let _ = c_write.shutdown(std::net::Shutdown::Write);
        });
    }
}
