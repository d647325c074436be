//! A TCP proxy in front of one etcd member that a test can cut off without closing anything.
//!
//! A client connects to the proxy's URL instead of the member's. In [`Mode::Forward`] every byte
//! goes through; in [`Mode::Blackhole`] nothing does, but every connection stays open and new
//! ones are still accepted, which is what a partition looks like to the client (no reset, no
//! error, only silence). [`Mode::AnswerPings`] is a blackhole that still answers the client's
//! HTTP/2 PINGs itself, so that HTTP/2 keepalive cannot notice the silence and only the library's
//! own fail-over can: a member whose transport is alive but whose etcd server says nothing.
//! [`Proxy::lose_answers_to`] passes every request and drops the member's answers to those that
//! carry a given byte string: the member applies such a request and the client never hears.
//! [`Proxy::drop_requests_to`] is the other half: it drops the requests that carry the byte string
//! themselves, so the member never applies them, and passes everything else.
//!
//! The proxy cuts the byte streams into HTTP/2 frames (gRPC over `http://` is HTTP/2 with prior
//! knowledge: a 24-byte client preface, then 9-byte frame headers) so that a frame is forwarded
//! or dropped whole, and an injected PING ACK never lands inside another frame.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the proxy does with the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pass everything through.
    Forward = 0,
    /// Pass nothing, answer nothing, close nothing.
    Blackhole = 1,
    /// Pass nothing, but answer the client's HTTP/2 PINGs.
    AnswerPings = 2,
    /// Pass everything but the answers to requests that carry the proxy's pattern
    /// ([`Proxy::lose_answers_to`]).
    LoseAnswers = 3,
    /// Pass everything but the requests that carry the proxy's pattern
    /// ([`Proxy::drop_requests_to`]).
    DropRequests = 4,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            0 => Mode::Forward,
            1 => Mode::Blackhole,
            2 => Mode::AnswerPings,
            3 => Mode::LoseAnswers,
            _ => Mode::DropRequests,
        }
    }
}

const PREFACE_LEN: usize = 24; // "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
const FRAME_HEADER_LEN: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;
const END_STREAM: u8 = 0x1;

struct Shared {
    mode: AtomicU8,
    stop: AtomicBool,
    /// What a request carries whose answer [`Mode::LoseAnswers`] drops, or which
    /// [`Mode::DropRequests`] drops.
    pattern: Mutex<Vec<u8>>,
    /// Answers dropped, counted when their last frame was.
    lost: AtomicUsize,
    /// Request frames dropped.
    dropped: AtomicUsize,
    /// A clone of every socket, so that drop can shut them down and wake every pump.
    sockets: Mutex<Vec<TcpStream>>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Ordering::SeqCst))
    }
}

/// A proxy listening on a free port of 127.0.0.1; stopped, with every connection closed, on drop.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy to the member at `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> Proxy {
        let target: SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .unwrap_or_else(|e| panic!("proxy upstream {upstream:?}: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        listener
            .set_nonblocking(true)
            .expect("proxy listener nonblocking");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            mode: AtomicU8::new(Mode::Forward as u8),
            stop: AtomicBool::new(false),
            pattern: Mutex::new(Vec::new()),
            lost: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            sockets: Mutex::new(Vec::new()),
            pumps: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || accept_loop(&listener, target, &shared))
        };
        Proxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The URL a client connects to instead of the member's.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Switches what happens to traffic from now on, on every connection.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// From now on, drops the member's answers (their HEADERS, DATA and CONTINUATION frames) to
    /// requests whose body carries `pattern`, and passes everything else. The client's header
    /// decoder misses whatever a dropped HEADERS frame added to its table, so the connection may
    /// fail at a later answer, as a connection would that lost bytes.
    pub fn lose_answers_to(&self, pattern: &[u8]) {
        *lock(&self.shared.pattern) = pattern.to_vec();
        self.set_mode(Mode::LoseAnswers);
    }

    /// How many answers were dropped so far.
    pub fn lost_answers(&self) -> usize {
        self.shared.lost.load(Ordering::SeqCst)
    }

    /// From now on, drops the DATA frames of requests that carry `pattern`, so the member never
    /// applies them (their stream stays open until the client gives up on it), and passes
    /// everything else.
    pub fn drop_requests_to(&self, pattern: &[u8]) {
        *lock(&self.shared.pattern) = pattern.to_vec();
        self.set_mode(Mode::DropRequests);
    }

    /// How many request frames were dropped so far.
    pub fn dropped_requests(&self) -> usize {
        self.shared.dropped.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for socket in lock(&self.shared.sockets).drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
        let pumps: Vec<_> = lock(&self.shared.pumps).drain(..).collect();
        for pump in pumps {
            let _ = pump.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn accept_loop(listener: &TcpListener, target: SocketAddr, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => continue,
        };
        // A stopped member's kernel still completes the handshake, so this does not hang.
        let Ok(upstream) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
            continue;
        };
        let _ = client.set_nonblocking(false);
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let (
            Ok(client_read),
            Ok(client_write),
            Ok(client_close),
            Ok(upstream_read),
            Ok(upstream_write),
            Ok(upstream_close),
        ) = (
            client.try_clone(),
            client.try_clone(),
            client.try_clone(),
            upstream.try_clone(),
            upstream.try_clone(),
            upstream.try_clone(),
        )
        else {
            continue;
        };
        lock(&shared.sockets).extend([client, upstream]);
        // Both directions write to the client (the pump from upstream, and PING answers), each a
        // whole frame under this lock.
        let to_client = Arc::new(Mutex::new(client_write));
        // The streams whose answers are to be dropped.
        let doomed = Arc::new(Mutex::new(HashSet::new()));
        let up = {
            let (shared, to_client) = (Arc::clone(shared), Arc::clone(&to_client));
            let doomed = Arc::clone(&doomed);
            std::thread::spawn(move || {
                pump(
                    client_read,
                    upstream_close,
                    true,
                    &shared,
                    |frame, mode| match mode {
                        Mode::Forward => (&upstream_write).write_all(frame).is_ok(),
                        Mode::LoseAnswers => {
                            if frame[3] == DATA && contains(frame, &lock(&shared.pattern)) {
                                lock(&doomed).insert(stream_id(frame));
                            }
                            (&upstream_write).write_all(frame).is_ok()
                        }
                        Mode::DropRequests => {
                            if frame[3] == DATA && contains(frame, &lock(&shared.pattern)) {
                                shared.dropped.fetch_add(1, Ordering::SeqCst);
                                return true;
                            }
                            (&upstream_write).write_all(frame).is_ok()
                        }
                        Mode::AnswerPings => match ping_ack(frame) {
                            Some(ack) => lock(&to_client).write_all(&ack).is_ok(),
                            None => true,
                        },
                        Mode::Blackhole => true,
                    },
                );
            })
        };
        let down = {
            let shared = Arc::clone(shared);
            std::thread::spawn(move || {
                pump(
                    upstream_read,
                    client_close,
                    false,
                    &shared,
                    |frame, mode| match mode {
                        Mode::Forward | Mode::DropRequests => {
                            lock(&to_client).write_all(frame).is_ok()
                        }
                        Mode::LoseAnswers => {
                            let stream = stream_id(frame);
                            let answer = matches!(frame[3], DATA | HEADERS | CONTINUATION);
                            if !answer || !lock(&doomed).contains(&stream) {
                                return lock(&to_client).write_all(frame).is_ok();
                            }
                            if frame[4] & END_STREAM != 0 {
                                lock(&doomed).remove(&stream);
                                shared.lost.fetch_add(1, Ordering::SeqCst);
                            }
                            true
                        }
                        Mode::Blackhole | Mode::AnswerPings => true,
                    },
                );
            })
        };
        lock(&shared.pumps).extend([up, down]);
    }
}

/// Reads `from` and hands every whole unit (the client preface, then one frame at a time) to
/// `deliver` with the mode of the moment, until the socket closes or `deliver` fails. A closed
/// socket closes the other side (`other`) only while forwarding: a blackhole closes nothing.
fn pump(
    mut from: TcpStream,
    other: TcpStream,
    client_side: bool,
    shared: &Shared,
    mut deliver: impl FnMut(&[u8], Mode) -> bool,
) {
    let mut buf = Vec::new();
    let mut preface = client_side;
    let mut chunk = [0u8; 16 * 1024];
    'read: loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let unit = if preface {
                PREFACE_LEN
            } else if buf.len() >= FRAME_HEADER_LEN {
                let len =
                    usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                FRAME_HEADER_LEN + len
            } else {
                break;
            };
            if buf.len() < unit {
                break;
            }
            preface = false;
            let frame: Vec<u8> = buf.drain(..unit).collect();
            if !deliver(&frame, shared.mode()) {
                break 'read;
            }
        }
    }
    if matches!(
        shared.mode(),
        Mode::Forward | Mode::LoseAnswers | Mode::DropRequests
    ) {
        let _ = other.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    }
}

/// The stream a frame belongs to.
fn stream_id(frame: &[u8]) -> u32 {
    u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff
}

/// Whether `frame`'s payload holds `pattern` (an empty pattern holds nowhere).
fn contains(frame: &[u8], pattern: &[u8]) -> bool {
    !pattern.is_empty()
        && frame[FRAME_HEADER_LEN..]
            .windows(pattern.len())
            .any(|w| w == pattern)
}

/// The ACK of an HTTP/2 PING frame, or `None` for any other frame.
fn ping_ack(frame: &[u8]) -> Option<Vec<u8>> {
    let is_ping = frame.len() == FRAME_HEADER_LEN + 8
        && frame[3] == PING
        && frame[4] & ACK == 0
        && frame[5..9] == [0, 0, 0, 0];
    if !is_ping {
        return None;
    }
    let mut ack = frame.to_vec();
    ack[4] = ACK;
    Some(ack)
}
