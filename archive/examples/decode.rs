//! Decompresses a file to nowhere and prints the time taken: the speed of `decompressed`.
//!
//! `cargo run -p archive --release --features compression --example decode -- FILE`

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(input) = std::env::args().nth(1) else {
        return Err("usage: decode FILE".into());
    };
    let started = Instant::now();
    let mut reader = archive::decompressed(std::fs::File::open(&input)?)?;
    let bytes = std::io::copy(&mut reader, &mut std::io::sink())?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{bytes} bytes in {seconds:.3}s ({:.0} MB/s)",
        bytes as f64 / seconds / 1e6
    );
    Ok(())
}
