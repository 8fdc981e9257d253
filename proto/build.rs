//! Generates the platter.v1 gRPC code with the vendored protoc (no system install needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let files = [
        "platter/v1/reward.proto",
        "platter/v1/coordinator.proto",
        "platter/v1/learner.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    // `PROTOC` is read by prost-build; setting it through the config avoids touching the
    // process environment (which would need `unsafe`).
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // Weight chunks as `Bytes`: the learner slices them out of the shared blob and the
    // receiver takes them out of the decode buffer without a copy each.
    config.bytes([".platter.v1.WeightChunk.data"]);
    tonic_prost_build::configure().compile_with_config(config, &files, &["."])?;
    Ok(())
}
