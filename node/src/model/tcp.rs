//! TCP backend of [`Communicator`]: ranks in separate processes or nodes.
//!
//! A star around rank 0: rank 0 listens, ranks 1..n connect and say who they
//! are. Reductions gather at rank 0, are summed there in rank order and sent
//! back, so every rank gets the same bits. Frames are a little-endian u64
//! length followed by the payload. For the small activations of a decode step
//! the latency of one round trip matters more than bandwidth, which is why a
//! star and not a ring.
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

fn recv(s: &mut TcpStream) -> Result<Vec<u8>, CommError> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len).map_err(io)?;
    let len = u64::from_le_bytes(len) as usize;
    if len > 1 << 32 {
        return Err(CommError::Io(format!("frame of {len} bytes refused")));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).map_err(io)?;
    Ok(buf)
}

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn to_floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

impl TcpCommunicator {
    /// Rank 0: accepts `world - 1` peers on `listener`.
    pub fn leader(listener: TcpListener, world: usize, timeout: Duration) -> Result<Self, CommError> {
        let mut slots: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
        listener.set_nonblocking(true).map_err(io)?;
        let deadline = Instant::now() + timeout;
        while slots.iter().any(Option::is_none) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).map_err(io)?;
                    s.set_nodelay(true).map_err(io)?;
                    let hello = recv(&mut s)?;
                    let rank = hello.first().copied().unwrap_or(0) as usize;
                    if rank == 0 || rank >= world || slots[rank - 1].is_some() {
                        return Err(CommError::Io(format!("unexpected peer rank {rank}")));
                    }
                    slots[rank - 1] = Some(s);
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
        let peers = slots.into_iter().map(|s| Mutex::new(s.expect("all slots filled"))).collect();
        Ok(Self { rank: 0, world, peers })
    }

    /// Rank `rank` > 0: connects to the leader at `addr`, retrying until `timeout`.
    pub fn follower(addr: SocketAddr, rank: usize, world: usize, timeout: Duration) -> Result<Self, CommError> {
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
        send(&mut s, &[rank as u8])?;
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
            let followers: Vec<_> = (1..world)
                .map(|r| {
                    std::thread::spawn(move || {
                        TcpCommunicator::follower(addr, r, world, Duration::from_secs(10)).unwrap()
                    })
                })
                .collect();
            let leader = TcpCommunicator::leader(listener, world, Duration::from_secs(10)).unwrap();
            let mut comms: Vec<Box<dyn Communicator>> = vec![Box::new(leader)];
            comms.extend(followers.into_iter().map(|h| Box::new(h.join().unwrap()) as Box<dyn Communicator>));
            crate::model::comm::tests::check_collectives(comms);
        }
    }
}
