//! TCP backend of [`Communicator`]: ranks in separate processes or nodes.
//!
//! A star around rank 0: rank 0 listens, ranks 1..n connect and say who they
//! are. Reductions gather at rank 0, are summed there in rank order and sent
//! back, so every rank gets the same bits. Frames are a little-endian u64
//! length followed by the payload. For the small activations of a decode step
//! the latency of one round trip matters more than bandwidth, which is why a
//! star and not a ring.
//!
//! Joining is authenticated both ways with a shared secret (`--model-group-secret-file`):
//! rank 0 sends a fresh nonce, the joining rank answers with its rank, its own
//! nonce and an HMAC-SHA256 over rank 0's nonce, the rank and the world size;
//! rank 0 checks it and answers with an HMAC over the joiner's nonce. A
//! connection that fails is dropped and rank 0 keeps waiting for the real rank,
//! so a stranger can neither join nor stop the group from forming. Frames are
//! capped at [`MAX_FRAME_BYTES`], and the handshake has a read timeout.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::comm::{CommError, Communicator};

/// See the module documentation.
pub struct TcpCommunicator {
    rank: usize,
    world: usize,
    /// Rank 0: a stream per peer (index r-1 for rank r). Others: one stream to rank 0.
    peers: Vec<Mutex<TcpStream>>,
}

fn io(e: impl std::fmt::Display) -> CommError {
    CommError::Io(e.to_string())
}

fn send(s: &mut TcpStream, payload: &[u8]) -> Result<(), CommError> {
    s.write_all(&(payload.len() as u64).to_le_bytes()).map_err(io)?;
    s.write_all(payload).map_err(io)
}

/// Largest frame accepted: a step's activations are a few MiB (tokens x hidden x 4).
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// How long one side of the join handshake may take to answer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

fn recv(s: &mut TcpStream) -> Result<Vec<u8>, CommError> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len).map_err(io)?;
    let len = u64::from_le_bytes(len);
    if len > MAX_FRAME_BYTES as u64 {
        return Err(CommError::Io(format!("frame of {len} bytes refused (limit {MAX_FRAME_BYTES})")));
    }
    let mut buf = vec![0u8; len as usize];
    s.read_exact(&mut buf).map_err(io)?;
    Ok(buf)
}

/// The group's shared secret (at least 16 bytes).
#[derive(Clone)]
pub struct GroupSecret(Vec<u8>);

impl std::fmt::Debug for GroupSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupSecret(..)")
    }
}

impl GroupSecret {
    /// A secret from bytes (a file's content, trimmed of surrounding whitespace).
    pub fn new(bytes: &[u8]) -> Result<Self, CommError> {
        let text = bytes.trim_ascii();
        if text.len() < 16 {
            return Err(CommError::Io("the model group secret must be at least 16 bytes".into()));
        }
        Ok(Self(text.to_vec()))
    }

    fn mac(&self, role: &[u8], nonce: &[u8], rank: usize, world: usize) -> Vec<u8> {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(role);
        mac.update(nonce);
        mac.update(&(rank as u64).to_le_bytes());
        mac.update(&(world as u64).to_le_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    fn verify(&self, tag: &[u8], role: &[u8], nonce: &[u8], rank: usize, world: usize) -> bool {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(role);
        mac.update(nonce);
        mac.update(&(rank as u64).to_le_bytes());
        mac.update(&(world as u64).to_le_bytes());
        mac.verify_slice(tag).is_ok()
    }
}

fn nonce() -> Result<[u8; 32], CommError> {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).map_err(|e| CommError::Io(format!("no randomness for the handshake: {e}")))?;
    Ok(n)
}

/// Rank 0's side of one join: the peer's rank once it proved the secret.
fn admit(s: &mut TcpStream, secret: &GroupSecret, world: usize, taken: &[bool]) -> Result<usize, CommError> {
    s.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(io)?;
    let mine = nonce()?;
    send(s, &mine)?;
    let hello = recv(s)?;
    // rank (1) + the joiner's nonce (32) + its tag (32)
    if hello.len() != 65 {
        return Err(CommError::Io("malformed join".into()));
    }
    let rank = hello[0] as usize;
    if rank == 0 || rank >= world || taken[rank - 1] {
        return Err(CommError::Io(format!("unexpected peer rank {rank}")));
    }
    if !secret.verify(&hello[33..], b"follower", &mine, rank, world) {
        return Err(CommError::Io(format!("rank {rank} did not prove the group secret")));
    }
    send(s, &secret.mac(b"leader", &hello[1..33], rank, world))?;
    s.set_read_timeout(None).map_err(io)?;
    Ok(rank)
}

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn to_floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

impl TcpCommunicator {
    /// Rank 0: accepts `world - 1` peers on `listener` that prove `secret`.
    pub fn leader(
        listener: TcpListener,
        world: usize,
        secret: &GroupSecret,
        timeout: Duration,
    ) -> Result<Self, CommError> {
        let mut slots: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
        listener.set_nonblocking(true).map_err(io)?;
        let deadline = Instant::now() + timeout;
        while slots.iter().any(Option::is_none) {
            match listener.accept() {
                Ok((mut s, from)) => {
                    s.set_nonblocking(false).map_err(io)?;
                    s.set_nodelay(true).map_err(io)?;
                    let taken: Vec<bool> = slots.iter().map(Option::is_some).collect();
                    match admit(&mut s, secret, world, &taken) {
                        Ok(rank) => slots[rank - 1] = Some(s),
                        // Not fatal: the real rank may still come.
                        Err(e) => tracing::warn!(%from, error = %e, "model group: connection refused"),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(CommError::Io("timed out waiting for ranks to connect".into()));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(io(e)),
            }
        }
        let peers = slots.into_iter().flatten().map(Mutex::new).collect();
        Ok(Self { rank: 0, world, peers })
    }

    /// Rank `rank` > 0: connects to the leader at `addr`, retrying until
    /// `timeout`, and proves `secret` (and checks that the leader knows it too).
    pub fn follower(
        addr: SocketAddr,
        rank: usize,
        world: usize,
        secret: &GroupSecret,
        timeout: Duration,
    ) -> Result<Self, CommError> {
        if rank == 0 || rank >= world || world > 255 {
            return Err(CommError::Io(format!("bad rank {rank} for world {world}")));
        }
        let deadline = Instant::now() + timeout;
        let mut s = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => return Err(io(e)),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        s.set_nodelay(true).map_err(io)?;
        s.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(io)?;
        let theirs = recv(&mut s)?;
        let mine = nonce()?;
        let mut hello = vec![rank as u8];
        hello.extend_from_slice(&mine);
        hello.extend_from_slice(&secret.mac(b"follower", &theirs, rank, world));
        send(&mut s, &hello)?;
        let proof = recv(&mut s).map_err(|e| CommError::Io(format!("rank 0 refused this rank ({e})")))?;
        if !secret.verify(&proof, b"leader", &mine, rank, world) {
            return Err(CommError::Io("rank 0 did not prove the group secret".into()));
        }
        s.set_read_timeout(None).map_err(io)?;
        Ok(Self { rank, world, peers: vec![Mutex::new(s)] })
    }

    fn peer(&self, i: usize) -> Result<std::sync::MutexGuard<'_, TcpStream>, CommError> {
        self.peers[i].lock().map_err(|_| CommError::Io("stream lock poisoned".into()))
    }

    /// Rank 0 collects one frame per peer, in rank order.
    fn gather_frames(&self) -> Result<Vec<Vec<u8>>, CommError> {
        (0..self.peers.len()).map(|i| recv(&mut *self.peer(i)?)).collect()
    }

    fn send_all(&self, payload: &[u8]) -> Result<(), CommError> {
        for i in 0..self.peers.len() {
            send(&mut *self.peer(i)?, payload)?;
        }
        Ok(())
    }
}

impl Communicator for TcpCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), CommError> {
        if self.world == 1 {
            return Ok(());
        }
        if self.rank == 0 {
            let mut sum = data.to_vec();
            for (i, frame) in self.gather_frames()?.into_iter().enumerate() {
                let part = to_floats(&frame);
                if part.len() != sum.len() {
                    return Err(CommError::Size { rank: i + 1, got: part.len(), expected: sum.len() });
                }
                sum.iter_mut().zip(part).for_each(|(s, p)| *s += p);
            }
            self.send_all(&to_bytes(&sum))?;
            data.copy_from_slice(&sum);
        } else {
            let mut s = self.peer(0)?;
            send(&mut s, &to_bytes(data))?;
            let sum = to_floats(&recv(&mut s)?);
            if sum.len() != data.len() {
                return Err(CommError::Size { rank: 0, got: sum.len(), expected: data.len() });
            }
            data.copy_from_slice(&sum);
        }
        Ok(())
    }

    fn all_gather(&self, data: &[f32]) -> Result<Vec<f32>, CommError> {
        if self.rank == 0 {
            let mut out = data.to_vec();
            for frame in self.gather_frames()? {
                out.extend(to_floats(&frame));
            }
            self.send_all(&to_bytes(&out))?;
            Ok(out)
        } else {
            let mut s = self.peer(0)?;
            send(&mut s, &to_bytes(data))?;
            Ok(to_floats(&recv(&mut s)?))
        }
    }

    fn broadcast(&self, data: &mut Vec<u8>, root: usize) -> Result<(), CommError> {
        if self.world == 1 {
            return Ok(());
        }
        // A non-zero root first hands its bytes to rank 0, which fans them out.
        if root != 0 {
            if self.rank == root {
                send(&mut *self.peer(0)?, data)?;
            } else if self.rank == 0 {
                *data = recv(&mut *self.peer(root - 1)?)?;
            }
        }
        if self.rank == 0 {
            self.send_all(data)?;
        } else {
            *data = recv(&mut *self.peer(0)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::comm::Communicator;

    #[test]
    fn tcp_collectives_over_loopback() {
        for world in 1..=3usize {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let secret = GroupSecret::new(b"a test secret of enough bytes").unwrap();
            let followers: Vec<_> = (1..world)
                .map(|r| {
                    let secret = secret.clone();
                    std::thread::spawn(move || {
                        TcpCommunicator::follower(addr, r, world, &secret, Duration::from_secs(10)).unwrap()
                    })
                })
                .collect();
            let leader = TcpCommunicator::leader(listener, world, &secret, Duration::from_secs(10)).unwrap();
            let mut comms: Vec<Box<dyn Communicator>> = vec![Box::new(leader)];
            comms.extend(followers.into_iter().map(|h| Box::new(h.join().unwrap()) as Box<dyn Communicator>));
            crate::model::comm::tests::check_collectives(comms);
        }
    }

    #[test]
    fn a_stranger_cannot_join_or_stop_the_group_and_frames_are_capped() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let secret = GroupSecret::new(b"the real group secret").unwrap();
        let wrong = GroupSecret::new(b"a guessed group secret").unwrap();
        let leader = {
            let secret = secret.clone();
            std::thread::spawn(move || TcpCommunicator::leader(listener, 2, &secret, Duration::from_secs(20)))
        };
        // A wrong secret is refused, and so is a peer that claims the rank and says nothing.
        let err = TcpCommunicator::follower(addr, 1, 2, &wrong, Duration::from_secs(5)).err().expect("refused");
        assert!(err.to_string().contains("refused"), "{err}");
        let mut silent = TcpStream::connect(addr).unwrap();
        let mut nonce = [0u8; 40];
        silent.read_exact(&mut nonce).unwrap();
        // A frame header announcing 4 GiB is refused without allocating it.
        silent.write_all(&(4u64 << 30).to_le_bytes()).unwrap();
        // The real rank still joins.
        let real = TcpCommunicator::follower(addr, 1, 2, &secret, Duration::from_secs(10)).unwrap();
        let leader = leader.join().unwrap().unwrap();
        let comms: Vec<Box<dyn Communicator>> = vec![Box::new(leader), Box::new(real)];
        crate::model::comm::tests::check_collectives(comms);
        assert!(GroupSecret::new(b"short").is_err());
    }
}
