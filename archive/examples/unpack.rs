//! Unpacks an archive file into a directory and prints the report and the time taken; a
//! manual benchmark against `tar -x` / `zstd -d | tar -x`.
//!
//! `cargo run -p archive --release --features compression --example unpack -- LAYER DIR`

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(input), Some(target)) = (args.next(), args.next()) else {
        return Err("usage: unpack ARCHIVE DIR".into());
    };
    let started = Instant::now();
    let file = std::fs::File::open(&input)?;
    #[cfg(feature = "compression")]
    let reader = archive::decompressed(file)?;
    #[cfg(not(feature = "compression"))]
    let reader = file;
    std::fs::create_dir_all(&target)?;
    let opts = archive::UnpackOptions {
        source: format!("archive {input}"),
        whiteouts: true,
        same_owner: true,
        devices: archive::DevicePolicy::Skip,
    };
    let report = archive::unpack(reader, target.as_ref(), &opts)?;
    println!(
        "{} entries, {} bytes, {} skipped in {:.3}s",
        report.entries,
        report.bytes,
        report.skipped.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
