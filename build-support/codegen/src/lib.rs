//! Protobuf code generation shared by the workspace's build scripts.
//!
//! It compiles `.proto` files with protox, a pure-Rust protobuf compiler, so a
//! fresh machine needs no `protoc`. The generated Rust goes to `OUT_DIR`, and so
//! does the encoded file descriptor set that the services serve for reflection.

use std::path::{Path, PathBuf};

use prost::Message;

/// The file name, under `OUT_DIR`, of the encoded file descriptor set.
pub const DESCRIPTOR_SET_FILE: &str = "descriptor_set.bin";

/// Compiles `files` (relative to `proto_root`) into Rust modules and an encoded
/// descriptor set in `OUT_DIR`, and tells Cargo to rerun when a proto changes.
pub fn generate(proto_root: &Path, files: &[&str]) -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={}", proto_root.display());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let descriptors = protox::compile(files, [proto_root])?;
    std::fs::write(
        out_dir.join(DESCRIPTOR_SET_FILE),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
