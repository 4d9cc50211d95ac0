//! Hostile clients against `mqnet-bench echo --listen`: a negative or huge length, garbage bytes, a
//! half-frame that stalls, and thousands of connects. The server closes the offending connections
//! and keeps answering a well-behaved neighbour. Runs for the mqnet server and the tokio peer.
//!
//! Every wait is bounded: reads time out, child output is awaited with a deadline, and the server
//! child is killed by PID and reaped when the test ends (also when it fails).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// The server child; killed and reaped on drop.
struct ServerChild(Child);

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(imp: &str) -> (ServerChild, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqnet-bench"))
        .args([
            "echo",
            "--listen",
            "127.0.0.1:0",
            "--impl",
            imp,
            "--duration",
            "120",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn mqnet-bench");
    let stdout = child.stdout.take().unwrap();
    let guard = ServerChild(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(WAIT).expect("server printed its address");
    let addr = line
        .split_whitespace()
        .last()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (guard, addr)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

/// One echo request/response with correlation check.
fn echo(s: &mut TcpStream, corr: i32) {
    let mut req = 100u32.to_be_bytes().to_vec();
    req.extend_from_slice(&[0, 0, 0, 0]);
    req.extend_from_slice(&corr.to_be_bytes());
    req.resize(4 + 100, 0);
    s.write_all(&req).unwrap();
    let mut head = [0u8; 8];
    s.read_exact(&mut head).unwrap();
    assert_eq!(u32::from_be_bytes(head[..4].try_into().unwrap()), 16);
    assert_eq!(i32::from_be_bytes(head[4..].try_into().unwrap()), corr);
    let mut rest = [0u8; 12];
    s.read_exact(&mut rest).unwrap();
}

fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    for _ in 0..1000 {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    false
}

fn hostile(imp: &str) {
    let (_server, addr) = start(imp);
    let mut neighbour = connect(addr);
    let mut corr = 0;
    echo(&mut neighbour, corr);

    let bad: [&[u8]; 4] = [
        &(-1i32).to_be_bytes(),
        &i32::MIN.to_be_bytes(),
        &0x7fff_ffffu32.to_be_bytes(),
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ];
    for bytes in bad {
        let mut h = connect(addr);
        h.write_all(bytes).unwrap();
        assert!(
            closed_by_server(&mut h),
            "{imp}: {bytes:?} did not close the connection"
        );
        corr += 1;
        echo(&mut neighbour, corr);
    }

    // A half-frame that stalls holds only its own connection.
    let mut stalled = connect(addr);
    stalled.write_all(&[0, 0, 0, 100, 0, 0]).unwrap();
    corr += 1;
    echo(&mut neighbour, corr);

    // Thousands of connects, closed at once.
    for _ in 0..2000 {
        drop(connect(addr));
    }
    corr += 1;
    echo(&mut neighbour, corr);
    // And a new connection is served.
    let mut late = connect(addr);
    echo(&mut late, 7);
    drop(stalled);
}

#[test]
fn hostile_clients_against_the_mqnet_server() {
    hostile("mqnet");
}

#[test]
fn hostile_clients_against_the_tokio_server() {
    hostile("tokio-mt");
}
