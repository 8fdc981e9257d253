//! Handing rank 0's NCCL unique id to the other ranks of a multi-process group over TCP.
//!
//! Rank 0 listens on an endpoint every rank knows (for example `10.0.0.1:29500`), creates the
//! id and sends its 128 bytes to each peer that connects; a peer connects (retrying while rank
//! 0 is not listening yet) and reads them. Both sides give up after the timeout with
//! [`Error::CollectiveTimeout`] naming the ranks that never showed up, so a dead peer cannot
//! hang the start of a job. The id is opaque here, so this code runs (and is tested) without
//! a GPU. Ranks that are threads of one process share the id in memory instead.
//!
//! Wire format (all integers little-endian): a peer sends `MAGIC`, its rank (u32) and the world
//! size (u32); rank 0 answers `MAGIC` and the 128 id bytes, or closes the connection when the
//! hello is malformed or names a wrong world size or rank.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Size of an NCCL unique id (`ncclUniqueId`).
pub const UNIQUE_ID_BYTES: usize = 128;

/// Opaque bytes of an NCCL unique id.
pub type UniqueIdBytes = [u8; UNIQUE_ID_BYTES];

const MAGIC: &[u8; 16] = b"platter-nccl-id1";
const HELLO_BYTES: usize = MAGIC.len() + 8;
const OP: &str = "nccl unique-id exchange";
/// Pause between polls of a non-blocking accept and between connection attempts.
const POLL: Duration = Duration::from_millis(20);
/// How long rank 0 waits for a connected peer's hello (a peer sends it at once), so that a
/// stray connection cannot hold up the others.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

fn io_error(rank: usize, what: &str, e: std::io::Error) -> Error {
    Error::Data {
        context: format!("rank {rank}, {OP}"),
        reason: format!("{what}: {e}"),
    }
}

fn timeout_error(rank: usize, timeout: Duration, missing: Vec<usize>) -> Error {
    Error::CollectiveTimeout {
        op: OP,
        rank,
        timeout_ms: timeout.as_millis(),
        missing,
    }
}

/// Rank 0's side: a bound listener that serves the id to `world - 1` peers.
#[derive(Debug)]
pub struct IdServer {
    listener: TcpListener,
}

impl IdServer {
    /// Binds `endpoint` (port 0 picks a free port; see [`IdServer::local_addr`]).
    pub fn bind(endpoint: SocketAddr) -> Result<Self> {
        let listener =
            TcpListener::bind(endpoint).map_err(|e| io_error(0, &format!("bind {endpoint}"), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io_error(0, "set the listener non-blocking", e))?;
        Ok(Self { listener })
    }

    /// The address peers connect to.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| io_error(0, "read the listener address", e))
    }

    /// Sends `id` to every rank in `1..world`; returns once each has received it, or fails
    /// after `timeout` naming the ranks that never connected. A connection with a malformed
    /// hello is dropped and does not count; one naming another world size fails the exchange.
    pub fn serve(&self, world: usize, id: &UniqueIdBytes, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut served = vec![false; world];
        if let Some(first) = served.first_mut() {
            *first = true;
        }
        while served.iter().any(|s| !s) {
            let now = Instant::now();
            if now >= deadline {
                let missing = (0..world).filter(|&r| !served[r]).collect();
                return Err(timeout_error(0, timeout, missing));
            }
            match self.listener.accept() {
                Ok((stream, peer)) => match serve_one(stream, world, id, deadline) {
                    Ok(rank) if !served[rank] => served[rank] = true,
                    Ok(rank) => tracing::warn!(
                        %peer, rank, "{OP}: rank {rank} asked for the id twice"
                    ),
                    Err(Hello::WrongWorld(theirs)) => {
                        return Err(Error::CollectiveMismatch {
                            rank: 0,
                            detail: format!(
                                "{OP}: a peer at {peer} expects {theirs} ranks, rank 0 \
                                     expects {world}"
                            ),
                        });
                    }
                    Err(Hello::Bad(reason)) => {
                        tracing::warn!(%peer, "{OP}: ignoring a connection: {reason}");
                    }
                },
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(POLL.min(deadline - now));
                }
                Err(e) => return Err(io_error(0, "accept a peer", e)),
            }
        }
        Ok(())
    }
}

enum Hello {
    WrongWorld(usize),
    Bad(String),
}

/// Reads one peer's hello and answers it with the id; the peer's rank.
fn serve_one(
    mut stream: TcpStream,
    world: usize,
    id: &UniqueIdBytes,
    deadline: Instant,
) -> std::result::Result<usize, Hello> {
    let bad = |what: &str, e: std::io::Error| Hello::Bad(format!("{what}: {e}"));
    let left = deadline
        .saturating_duration_since(Instant::now())
        .clamp(Duration::from_millis(1), HELLO_TIMEOUT);
    stream
        .set_nonblocking(false)
        .map_err(|e| bad("set blocking", e))?;
    stream
        .set_read_timeout(Some(left))
        .map_err(|e| bad("set a read timeout", e))?;
    stream
        .set_write_timeout(Some(left))
        .map_err(|e| bad("set a write timeout", e))?;
    let mut hello = [0u8; HELLO_BYTES];
    stream
        .read_exact(&mut hello)
        .map_err(|e| bad("read the hello", e))?;
    if &hello[..MAGIC.len()] != MAGIC {
        return Err(Hello::Bad("not a platter id request".into()));
    }
    let rank = u32::from_le_bytes(hello[16..20].try_into().unwrap_or_default()) as usize;
    let theirs = u32::from_le_bytes(hello[20..24].try_into().unwrap_or_default()) as usize;
    if theirs != world {
        return Err(Hello::WrongWorld(theirs));
    }
    if rank == 0 || rank >= world {
        return Err(Hello::Bad(format!(
            "rank {rank} is not a peer rank of a group of {world}"
        )));
    }
    let mut reply = Vec::with_capacity(MAGIC.len() + UNIQUE_ID_BYTES);
    reply.extend_from_slice(MAGIC);
    reply.extend_from_slice(id);
    stream
        .write_all(&reply)
        .and_then(|()| stream.flush())
        .map_err(|e| bad("send the id", e))?;
    Ok(rank)
}

/// A peer's side: connects to rank 0 at `endpoint` (retrying until rank 0 listens) and
/// returns the id it sends, or fails after `timeout`.
pub fn fetch_unique_id(
    endpoint: SocketAddr,
    rank: usize,
    world: usize,
    timeout: Duration,
) -> Result<UniqueIdBytes> {
    if rank == 0 || rank >= world {
        return Err(Error::BadRank { rank, world });
    }
    let deadline = Instant::now() + timeout;
    let mut last_error = String::from("no attempt");
    loop {
        let now = Instant::now();
        if now >= deadline {
            tracing::warn!(rank, %endpoint, "{OP}: last connection error: {last_error}");
            return Err(timeout_error(rank, timeout, vec![0]));
        }
        let left = deadline - now;
        match TcpStream::connect_timeout(&endpoint, left) {
            Ok(stream) => match ask(stream, rank, world, left) {
                Ok(id) => return Ok(id),
                Err(e) if e.kind() == ErrorKind::InvalidData => {
                    return Err(Error::CollectiveMismatch {
                        rank,
                        detail: format!("{OP}: {endpoint} answered: {e}"),
                    });
                }
                Err(e) => last_error = e.to_string(),
            },
            Err(e) => last_error = e.to_string(),
        }
        std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

fn ask(
    mut stream: TcpStream,
    rank: usize,
    world: usize,
    left: Duration,
) -> std::io::Result<UniqueIdBytes> {
    stream.set_read_timeout(Some(left))?;
    stream.set_write_timeout(Some(left))?;
    let mut hello = Vec::with_capacity(HELLO_BYTES);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&(rank as u32).to_le_bytes());
    hello.extend_from_slice(&(world as u32).to_le_bytes());
    stream.write_all(&hello)?;
    stream.flush()?;
    let mut reply = [0u8; MAGIC.len() + UNIQUE_ID_BYTES];
    stream.read_exact(&mut reply)?;
    if &reply[..MAGIC.len()] != MAGIC {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            "not a platter id server",
        ));
    }
    let mut id = [0u8; UNIQUE_ID_BYTES];
    id.copy_from_slice(&reply[MAGIC.len()..]);
    Ok(id)
}

/// Both sides in one call: rank 0 binds `endpoint`, calls `create` and serves the result;
/// every other rank fetches it. Each side waits at most `timeout`.
pub fn exchange_unique_id(
    rank: usize,
    world: usize,
    endpoint: SocketAddr,
    timeout: Duration,
    create: impl FnOnce() -> Result<UniqueIdBytes>,
) -> Result<UniqueIdBytes> {
    if rank >= world {
        return Err(Error::BadRank { rank, world });
    }
    if rank == 0 {
        let id = create()?;
        if world > 1 {
            IdServer::bind(endpoint)?.serve(world, &id, timeout)?;
        }
        Ok(id)
    } else {
        fetch_unique_id(endpoint, rank, world, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seed: u8) -> UniqueIdBytes {
        std::array::from_fn(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
    }

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[test]
    fn every_peer_gets_rank_zero_id() {
        let server = IdServer::bind(loopback()).unwrap();
        let addr = server.local_addr().unwrap();
        let timeout = Duration::from_secs(20);
        // Peers start before rank 0 serves: they retry until it does.
        let peers: Vec<_> = (1..4)
            .map(|r| std::thread::spawn(move || fetch_unique_id(addr, r, 4, timeout)))
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        server.serve(4, &id(3), timeout).unwrap();
        for p in peers {
            assert_eq!(p.join().unwrap().unwrap(), id(3));
        }
    }

    #[test]
    fn exchange_through_the_one_call_api() {
        // Find a free port, release it, then let rank 0 bind it by address.
        let addr = TcpListener::bind(loopback()).unwrap().local_addr().unwrap();
        let timeout = Duration::from_secs(20);
        let handles: Vec<_> = (0..3)
            .map(|r| {
                std::thread::spawn(move || {
                    exchange_unique_id(r, 3, addr, timeout, || {
                        assert_eq!(r, 0, "only rank 0 creates the id");
                        Ok(id(9))
                    })
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap().unwrap(), id(9));
        }
        // One rank: no network at all.
        assert_eq!(
            exchange_unique_id(0, 1, addr, timeout, || Ok(id(1))).unwrap(),
            id(1)
        );
    }

    #[test]
    fn rank_zero_times_out_naming_the_ranks_that_never_came() {
        let server = IdServer::bind(loopback()).unwrap();
        let addr = server.local_addr().unwrap();
        let timeout = Duration::from_secs(20);
        let peer = std::thread::spawn(move || fetch_unique_id(addr, 1, 3, timeout));
        let started = Instant::now();
        let e = server
            .serve(3, &id(0), Duration::from_millis(400))
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        match e {
            Error::CollectiveTimeout {
                op, rank, missing, ..
            } => {
                assert_eq!((op, rank, missing), (OP, 0, vec![2]));
            }
            other => panic!("expected a timeout, got {other}"),
        }
        assert_eq!(peer.join().unwrap().unwrap(), id(0));
    }

    #[test]
    fn a_peer_times_out_when_rank_zero_never_listens() {
        let addr = TcpListener::bind(loopback()).unwrap().local_addr().unwrap();
        let started = Instant::now();
        let e = fetch_unique_id(addr, 2, 3, Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(10));
        let text = e.to_string();
        assert!(
            matches!(&e, Error::CollectiveTimeout { rank: 2, missing, .. } if missing == &[0]),
            "{text}"
        );
        assert!(
            text.contains("unique-id exchange") && text.contains("300 ms"),
            "{text}"
        );
    }

    #[test]
    fn a_world_size_disagreement_fails_both_sides() {
        let server = IdServer::bind(loopback()).unwrap();
        let addr = server.local_addr().unwrap();
        let peer =
            std::thread::spawn(move || fetch_unique_id(addr, 1, 3, Duration::from_millis(500)));
        let e = server.serve(2, &id(0), Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(&e, Error::CollectiveMismatch { rank: 0, detail } if detail.contains("3 ranks")),
            "{e}"
        );
        // Rank 0 closed the connection without an answer; the peer keeps retrying until its
        // own deadline since nobody listens any more.
        drop(server);
        assert!(peer.join().unwrap().is_err());
    }

    #[test]
    fn a_stray_connection_is_ignored() {
        let server = IdServer::bind(loopback()).unwrap();
        let addr = server.local_addr().unwrap();
        let timeout = Duration::from_secs(20);
        // A full-length hello of the wrong kind, and one that stops short (the server gives
        // up on it after HELLO_TIMEOUT); both are closed without an answer.
        let strays: Vec<_> = [&b"GET / HTTP/1.1\r\nHost: platter\r\n\r\n"[..], b"GET /"]
            .into_iter()
            .map(|req| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(req).unwrap();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let _ = s.read_to_end(&mut buf);
                    buf
                })
            })
            .collect();
        let peer = std::thread::spawn(move || fetch_unique_id(addr, 1, 2, timeout));
        let started = Instant::now();
        server.serve(2, &id(5), timeout).unwrap();
        assert!(started.elapsed() < timeout);
        for s in strays {
            assert!(s.join().unwrap().is_empty());
        }
        assert_eq!(peer.join().unwrap().unwrap(), id(5));
    }

    #[test]
    fn bad_ranks_are_refused_before_any_network() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let t = Duration::from_millis(10);
        assert!(matches!(
            fetch_unique_id(addr, 0, 2, t),
            Err(Error::BadRank { rank: 0, world: 2 })
        ));
        assert!(matches!(
            exchange_unique_id(3, 2, addr, t, || Ok(id(0))),
            Err(Error::BadRank { rank: 3, world: 2 })
        ));
    }
}
