//! Compiles `tether/v1/*.proto` with the pure-Rust `protox` compiler, so that
//! no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "tether/v1/spec.proto",
        "tether/v1/rpc.proto",
        "tether/v1/archive.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
