//! NCCL backend of [`Communicator`] (feature `cuda`), through cudarc's `nccl`
//! module, the binding candle itself uses.
//!
//! The model's activations live in host memory on the CPU build, so each
//! collective copies its buffer to the rank's GPU, runs the NCCL collective on
//! the rank's stream, and copies the result back. The NCCL unique id is made
//! by rank 0 and handed to the others through a bootstrap communicator (TCP
//! between processes, or the in-process group). Libraries are loaded at run
//! time: on a machine without libcuda or libnccl, [`NcclCommunicator::new`]
//! returns an error instead of panicking.
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::safe::{Comm, Id, ReduceOp};

use super::comm::{CommError, Communicator};

/// See the module documentation.
pub struct NcclCommunicator {
    comm: Comm,
    stream: Arc<CudaStream>,
    rank: usize,
    world: usize,
}

// SAFETY: an NCCL communicator may be used from any one thread at a time; a rank
// drives its communicator from its own thread only, and the stream handle is
// reference counted by cudarc.
unsafe impl Send for NcclCommunicator {}
unsafe impl Sync for NcclCommunicator {}

fn err(e: impl std::fmt::Debug) -> CommError {
    CommError::Io(format!("nccl: {e:?}"))
}

/// Whether the CUDA driver and NCCL libraries can be loaded here.
pub fn available() -> bool {
    // SAFETY: these only try to dlopen the libraries.
    unsafe { cudarc::driver::sys::is_culib_present() && cudarc::nccl::sys::is_culib_present() }
}

impl NcclCommunicator {
    /// Joins the NCCL group of `bootstrap`'s ranks on GPU `device`.
    pub fn new(bootstrap: &dyn Communicator, device: usize) -> Result<Self, CommError> {
        if !available() {
            return Err(CommError::Io("libcuda or libnccl cannot be loaded on this machine".into()));
        }
        let (rank, world) = (bootstrap.rank(), bootstrap.world_size());
        let mut id_bytes = if rank == 0 {
            let id = Id::new().map_err(err)?;
            id.internal().iter().map(|c| *c as u8).collect::<Vec<u8>>()
        } else {
            Vec::new()
        };
        bootstrap.broadcast(&mut id_bytes, 0)?;
        if id_bytes.len() != 128 {
            return Err(CommError::Io(format!("NCCL id of {} bytes", id_bytes.len())));
        }
        let mut internal = [0 as std::ffi::c_char; 128];
        for (d, s) in internal.iter_mut().zip(&id_bytes) {
            *d = *s as std::ffi::c_char;
        }
        let ctx = CudaContext::new(device).map_err(err)?;
        let stream = ctx.default_stream();
        let comm = Comm::from_rank(stream.clone(), rank, world, Id::uninit(internal)).map_err(err)?;
        Ok(Self { comm, stream, rank, world })
    }
}

impl Communicator for NcclCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), CommError> {
        let mut buf = self.stream.clone_htod(data).map_err(err)?;
        self.comm.all_reduce_in_place(&mut buf, &ReduceOp::Sum).map_err(err)?;
        let out = self.stream.clone_dtoh(&buf).map_err(err)?;
        data.copy_from_slice(&out);
        Ok(())
    }

    fn all_gather(&self, data: &[f32]) -> Result<Vec<f32>, CommError> {
        // NCCL gathers equal-sized buffers; ranks may hold different widths, so
        // sizes are agreed first and buffers padded to the largest.
        let mut len = self.stream.clone_htod(&[data.len() as f32]).map_err(err)?;
        let mut lens_dev = self.stream.alloc_zeros::<f32>(self.world).map_err(err)?;
        self.comm.all_gather(&len, &mut lens_dev).map_err(err)?;
        let lens: Vec<usize> =
            self.stream.clone_dtoh(&lens_dev).map_err(err)?.into_iter().map(|x| x as usize).collect();
        let max = lens.iter().copied().max().unwrap_or(0);
        let mut padded = data.to_vec();
        padded.resize(max, 0.0);
        len = self.stream.clone_htod(&padded).map_err(err)?;
        let mut all = self.stream.alloc_zeros::<f32>(max * self.world).map_err(err)?;
        self.comm.all_gather(&len, &mut all).map_err(err)?;
        let all = self.stream.clone_dtoh(&all).map_err(err)?;
        Ok(lens.iter().enumerate().flat_map(|(r, &n)| all[r * max..r * max + n].iter().copied()).collect())
    }

    fn broadcast(&self, data: &mut Vec<u8>, root: usize) -> Result<(), CommError> {
        // Length first, then the bytes.
        let mut len = self.stream.clone_htod(&[data.len() as u64]).map_err(err)?;
        self.comm.broadcast_in_place(&mut len, root as i32).map_err(err)?;
        let n = self.stream.clone_dtoh(&len).map_err(err)?[0] as usize;
        let mut bytes = data.clone();
        bytes.resize(n.max(1), 0);
        let mut buf = self.stream.clone_htod(&bytes).map_err(err)?;
        self.comm.broadcast_in_place(&mut buf, root as i32).map_err(err)?;
        let mut out = self.stream.clone_dtoh(&buf).map_err(err)?;
        out.truncate(n);
        *data = out;
        Ok(())
    }
}
