//! Generates the gRPC code from `proto/` with the protoc shipped inside `protoc-bin-vendored`, so a
//! fresh machine needs nothing but `cargo build`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let proto_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let queue = proto_root.join("pochta/queue/v1/queue.proto");
    let include = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure().compile_with_config(config, &[queue], &[proto_root, include])?;
    Ok(())
}
