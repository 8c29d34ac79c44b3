//! Client sockets by the hundred, for tests that open many connections to ampere and watch it
//! close them: opened from several threads, then polled without blocking until the server
//! has closed each one.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::thread::{self, sleep, JoinHandle};
use std::time::{Duration, Instant};

/// Opens `n` connections to `addr` from 8 threads; returns them and how many connects failed.
/// A connect whose client port last served a connection the server closed (in TIME_WAIT
/// there) waits a SYN retransmission (1 s): the threads keep those from adding up.
pub(crate) fn connect_many(addr: SocketAddr, n: usize) -> (Vec<TcpStream>, usize) {
    const THREADS: usize = 8;
    let connectors: Vec<JoinHandle<(Vec<TcpStream>, usize)>> = (0..THREADS)
        .map(|t| {
            let count = n / THREADS + usize::from(t < n % THREADS);
            thread::spawn(move || {
                let mut streams = Vec::with_capacity(count);
                let mut failed = 0;
                for _ in 0..count {
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
                        Ok(stream) => streams.push(stream),
                        Err(_) => failed += 1,
                    }
                }
                (streams, failed)
            })
        })
        .collect();
    let mut streams = Vec::with_capacity(n);
    let mut failed = 0;
    for connector in connectors {
        let (mut opened, lost) = connector.join().expect("connector");
        streams.append(&mut opened);
        failed += lost;
    }
    (streams, failed)
}

/// Whether the server has closed `stream` (end of stream, reset, or anything but "no data
/// yet"); whatever it sent before is read and returned.
pub(crate) fn closed_by_server(stream: &mut TcpStream) -> (bool, Vec<u8>) {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (true, received),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return (false, received),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return (true, received),
        }
    }
}

/// Polls until the server has closed every stream, or `within` passes; returns how many are
/// still open, and what the closed ones received.
pub(crate) fn wait_all_closed(
    streams: &mut [TcpStream],
    within: Duration,
) -> (usize, Vec<Vec<u8>>) {
    let deadline = Instant::now() + within;
    let mut replies = vec![Vec::new(); streams.len()];
    let mut closed = vec![false; streams.len()];
    loop {
        for (i, stream) in streams.iter_mut().enumerate() {
            if !closed[i] {
                let (is_closed, bytes) = closed_by_server(stream);
                replies[i].extend_from_slice(&bytes);
                closed[i] = is_closed;
            }
        }
        let open = closed.iter().filter(|c| !**c).count();
        if open == 0 || Instant::now() >= deadline {
            return (open, replies);
        }
        sleep(Duration::from_millis(100));
    }
}
