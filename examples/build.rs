//! Generates the tonic client and server of `proto/ratings.proto` with
//! protox (pure Rust, so no `protoc` is needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/ratings.proto");
    let fds = protox::compile(["proto/ratings.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
