//! Compiles proto/poshsm/v1/*.proto with protox (pure Rust: no system protoc).
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/poshsm/v1/common.proto",
        "proto/poshsm/v1/crypto.proto",
        "proto/poshsm/v1/admin.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out.join("poshsm_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        // tonic's prost codec with a small starting buffer (src/server/codec.rs).
        .codec_path("crate::server::codec::SmallBufferCodec")
        .compile_fds(fds)?;
    Ok(())
}
