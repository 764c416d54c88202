//! Compiles proto/*.proto with protox (pure Rust), so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["proto/umbra.proto", "proto/peer/etcd_kv.proto"], ["proto"])?;
    // File data as `bytes::Bytes`: a received chunk is a slice of the receive buffer, not a copy.
    tonic_prost_build::configure().bytes(".umbra.v1.WriteChunk.data").bytes(".umbra.v1.DataChunk.data").compile_fds(fds)?;
    Ok(())
}
