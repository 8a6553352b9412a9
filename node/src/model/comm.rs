//! Collective communication between the tensor-parallel ranks of one model group.
//!
//! [`Communicator`] is what the model code sees; backends decide where ranks
//! live: [`LocalGroup`] (threads of one process), [`super::tcp::TcpCommunicator`]
//! (processes or nodes over TCP) and, behind the `cuda` feature, NCCL.
//! Reductions sum in rank order on every backend, so every rank ends a step with
//! bit-identical activations.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use thiserror::Error;

/// Why a collective failed.
#[derive(Debug, Error)]
pub enum CommError {
    /// A peer went away or sent something unreadable.
    #[error("communicator: {0}")]
    Io(String),
    /// Ranks disagreed on a buffer size.
    #[error("communicator: rank {rank} sent {got} values, expected {expected}")]
    Size {
        /// The offending rank.
        rank: usize,
        /// Its length.
        got: usize,
        /// The expected length.
        expected: usize,
    },
}

/// Collectives over the ranks of one model group.
pub trait Communicator: Send + Sync {
    /// This rank.
    fn rank(&self) -> usize;
    /// Ranks in the group.
    fn world_size(&self) -> usize;
    /// Element-wise sum over all ranks, in rank order; every rank gets the result.
    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), CommError>;
    /// Every rank's `data`, concatenated in rank order.
    fn all_gather(&self, data: &[f32]) -> Result<Vec<f32>, CommError>;
    /// Replaces `data` on every rank with `root`'s.
    fn broadcast(&self, data: &mut Vec<u8>, root: usize) -> Result<(), CommError>;
}

/// Any communicator with a `debug` span around each collective (`comm.all_reduce_sum`,
/// `comm.all_gather`, `comm.broadcast`), so every backend is traced the same way.
pub struct Traced(pub Box<dyn Communicator>);

impl Communicator for Traced {
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn world_size(&self) -> usize {
        self.0.world_size()
    }
    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), CommError> {
        let _span = tracing::debug_span!("comm.all_reduce_sum", rank = self.rank(), values = data.len()).entered();
        self.0.all_reduce_sum(data)
    }
    fn all_gather(&self, data: &[f32]) -> Result<Vec<f32>, CommError> {
        let _span = tracing::debug_span!("comm.all_gather", rank = self.rank(), values = data.len()).entered();
        self.0.all_gather(data)
    }
    fn broadcast(&self, data: &mut Vec<u8>, root: usize) -> Result<(), CommError> {
        let _span = tracing::debug_span!("comm.broadcast", rank = self.rank(), root).entered();
        self.0.broadcast(data, root)
    }
}

/// The trivial group of one rank.
pub struct SingleRank;

impl Communicator for SingleRank {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _data: &mut [f32]) -> Result<(), CommError> {
        Ok(())
    }
    fn all_gather(&self, data: &[f32]) -> Result<Vec<f32>, CommError> {
        Ok(data.to_vec())
    }
    fn broadcast(&self, _data: &mut Vec<u8>, _root: usize) -> Result<(), CommError> {
        Ok(())
    }
}

/// A barrier that spins briefly before it sleeps. Ranks meet at two barriers
/// per collective and four collectives per layer: with `std::sync::Barrier`
/// every meeting was a futex sleep and wake-up (tens of µs on a busy VM), a
/// quarter of a tp-2 decode step. Ranks usually arrive within microseconds of
/// each other, so a short spin catches them; an idle group (waiting for the
/// next step) still sleeps on the condition variable instead of burning a core.
struct SpinBarrier {
    parties: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

/// Spin iterations (each a CPU pause hint) before a waiter sleeps.
const SPINS: usize = 4000;

impl SpinBarrier {
    fn new(parties: usize) -> Self {
        Self {
            parties,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.parties {
            // Last to arrive: reset for the next use, then release the others.
            self.arrived.store(0, Ordering::Relaxed);
            let _held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.generation.fetch_add(1, Ordering::Release);
            self.wake.notify_all();
            return;
        }
        for i in 0..SPINS {
            if self.generation.load(Ordering::Acquire) != generation {
                return;
            }
            if i % 256 == 255 {
                // Let an oversubscribed rank (more ranks than cores) run.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        let mut held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while self.generation.load(Ordering::Acquire) == generation {
            held = self.wake.wait(held).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Buffers of a local group, two sets used in turn: a rank writes the set of
/// its collective's parity, meets the others at one barrier, and reads. No
/// second barrier is needed before the buffers are reused: a rank that runs
/// ahead writes the other set, and cannot come back to this one before the
/// next barrier, which the slowest reader has to reach first.
struct Shared {
    barrier: SpinBarrier,
    floats: [Vec<Mutex<Vec<f32>>>; 2],
    bytes: [Mutex<Vec<u8>>; 2],
}

/// In-process backend: ranks are threads sharing buffers behind a barrier.
pub struct LocalGroup;

impl LocalGroup {
    /// One communicator per rank of a `world`-rank group.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(world: usize) -> Vec<LocalCommunicator> {
        let floats = || (0..world).map(|_| Mutex::new(Vec::new())).collect::<Vec<_>>();
        let shared = Arc::new(Shared {
            barrier: SpinBarrier::new(world),
            floats: [floats(), floats()],
            bytes: [Mutex::new(Vec::new()), Mutex::new(Vec::new())],
        });
        (0..world)
            .map(|rank| LocalCommunicator { rank, world, shared: shared.clone(), round: AtomicUsize::new(0) })
            .collect()
    }
}

/// One rank of a [`LocalGroup`].
pub struct LocalCommunicator {
    rank: usize,
    world: usize,
    shared: Arc<Shared>,
    /// Collectives this rank has run (every rank runs the same sequence); its
    /// parity picks the buffer set.
    round: AtomicUsize,
}

impl LocalCommunicator {
    fn parity(&self) -> usize {
        self.round.fetch_add(1, Ordering::Relaxed) % 2
    }
}

/// Overwrites a rank's buffer with `data`, reusing its allocation.
fn publish(slot: &Mutex<Vec<f32>>, data: &[f32]) -> Result<(), CommError> {
    let mut buf = lock(slot)?;
    buf.clear();
    buf.extend_from_slice(data);
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>, CommError> {
    m.lock().map_err(|_| CommError::Io("a rank panicked while holding a buffer".into()))
}

impl Communicator for LocalCommunicator {
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
        let floats = &self.shared.floats[self.parity()];
        publish(&floats[self.rank], data)?;
        self.shared.barrier.wait();
        let mut sum = lock(&floats[0])?.clone();
        for (r, part) in floats.iter().enumerate().skip(1) {
            let part = lock(part)?;
            if part.len() != sum.len() {
                return Err(CommError::Size { rank: r, got: part.len(), expected: sum.len() });
            }
            sum.iter_mut().zip(part.iter()).for_each(|(s, p)| *s += p);
        }
        data.copy_from_slice(&sum);
        Ok(())
    }

    fn all_gather(&self, data: &[f32]) -> Result<Vec<f32>, CommError> {
        let floats = &self.shared.floats[self.parity()];
        publish(&floats[self.rank], data)?;
        self.shared.barrier.wait();
        let mut out = Vec::new();
        for part in floats {
            out.extend_from_slice(&lock(part)?);
        }
        Ok(out)
    }

    fn broadcast(&self, data: &mut Vec<u8>, root: usize) -> Result<(), CommError> {
        if self.world == 1 {
            return Ok(());
        }
        let bytes = &self.shared.bytes[self.parity()];
        if self.rank == root {
            *lock(bytes)? = data.clone();
        }
        self.shared.barrier.wait();
        if self.rank != root {
            *data = lock(bytes)?.clone();
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Runs `f` on every rank of a local group and returns the results by rank.
    pub(crate) fn on_ranks<T: Send + 'static>(
        comms: Vec<Box<dyn Communicator>>,
        f: impl Fn(&dyn Communicator) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let f = Arc::new(f);
        let handles: Vec<_> = comms
            .into_iter()
            .map(|c| {
                let f = f.clone();
                std::thread::spawn(move || f(c.as_ref()))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    pub(crate) fn check_collectives(comms: Vec<Box<dyn Communicator>>) {
        let world = comms.len();
        let results = on_ranks(comms, |c| {
            let r = c.rank() as f32;
            let mut v = vec![r, 10.0 * r, 1.0];
            c.all_reduce_sum(&mut v).unwrap();
            let g = c.all_gather(&[r, -r]).unwrap();
            let mut b = if c.rank() == 0 { b"step 1".to_vec() } else { Vec::new() };
            c.broadcast(&mut b, 0).unwrap();
            (v, g, b)
        });
        let n = world as f32;
        let sum: f32 = (0..world).map(|r| r as f32).sum();
        for (v, g, b) in results {
            assert_eq!(v, vec![sum, 10.0 * sum, n]);
            assert_eq!(g, (0..world).flat_map(|r| [r as f32, -(r as f32)]).collect::<Vec<_>>());
            assert_eq!(b, b"step 1");
        }
    }

    #[test]
    fn local_group_collectives() {
        for world in 1..=3 {
            check_collectives(
                LocalGroup::new(world).into_iter().map(|c| Box::new(c) as Box<dyn Communicator>).collect(),
            );
        }
    }
}
