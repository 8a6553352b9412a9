//! The NCCL communicator on real GPUs (feature `cuda`). Skips, saying so, on
//! machines where libcuda or libnccl cannot be loaded, unless
//! TESSERA_REQUIRE_GPU=1 (as on the GPU machine), where that is a failure.
#![cfg(feature = "cuda")]

use tessera_node::model::comm::{Communicator, LocalGroup, SingleRank};
use tessera_node::model::nccl::{available, NcclCommunicator};

fn required() -> bool {
    std::env::var("TESSERA_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

fn check(c: &dyn Communicator) {
    let world = c.world_size();
    let r = c.rank() as f32;
    let mut v = vec![r, 1.0, 2.5];
    c.all_reduce_sum(&mut v).unwrap();
    let sum: f32 = (0..world).map(|x| x as f32).sum();
    assert_eq!(v, vec![sum, world as f32, 2.5 * world as f32]);
    // Uneven widths: rank r contributes r + 1 values.
    let mine: Vec<f32> = (0..=c.rank()).map(|i| (10 * c.rank() + i) as f32).collect();
    let all = c.all_gather(&mine).unwrap();
    let want: Vec<f32> = (0..world).flat_map(|rk| (0..=rk).map(move |i| (10 * rk + i) as f32)).collect();
    assert_eq!(all, want);
    let mut b = if c.rank() == 0 { b"step".to_vec() } else { Vec::new() };
    c.broadcast(&mut b, 0).unwrap();
    assert_eq!(b, b"step");
}

#[test]
fn nccl_collectives() {
    if !available() {
        assert!(!required(), "TESSERA_REQUIRE_GPU=1 but libcuda/libnccl cannot be loaded");
        eprintln!("skipping: libcuda or libnccl not loadable here");
        return;
    }
    let one = NcclCommunicator::new(&SingleRank, 0).unwrap();
    check(&one);
    let devices = cudarc::driver::CudaContext::device_count().unwrap_or(0) as usize;
    eprintln!("{devices} CUDA device(s)");
    if devices >= 2 {
        let handles: Vec<_> = LocalGroup::new(2)
            .into_iter()
            .map(|boot| {
                std::thread::spawn(move || {
                    let c = NcclCommunicator::new(&boot, boot.rank()).unwrap();
                    check(&c);
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
    }
}
