//! Generates the tonic/prost code for `tessera.v1`.
//!
//! Uses the system `protoc` when `PROTOC` is set, otherwise the vendored one, so a
//! fresh machine builds without installing anything.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("tessera_descriptor.bin"))
        .compile_protos(&["proto/tessera/v1/tessera.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/tessera/v1/tessera.proto");
    Ok(())
}
