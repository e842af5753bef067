//! How long stage 1's native LUKS unlock takes on this machine, for BENCHMARKS.md:
//! `unlock_time IMAGE < passphrase` reads the header, opens a keyslot (KDF, keyslot
//! decryption, AF merge, digest) and prints the milliseconds; the same work as
//! `cryptsetup open --test-passphrase` (no device-mapper involved).
#![allow(clippy::expect_used, clippy::indexing_slicing)]

use std::io::Read;
use std::time::Instant;

use stagehand_stage1::layers::luks;

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: unlock_time IMAGE < passphrase");
    let mut pass = Vec::new();
    std::io::stdin()
        .read_to_end(&mut pass)
        .expect("passphrase on stdin");
    let t = Instant::now();
    let mut f = std::fs::File::open(&path).expect("open the image");
    let header = luks::read_header(&mut f).expect("a LUKS header");
    let key = header.unlock(&mut f, &pass).expect("readable keyslots");
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    match key {
        Some(_) => println!("opened in {ms:.0} ms ({})", header.keyslots[0].kdf.name()),
        None => {
            println!("wrong passphrase ({ms:.0} ms)");
            std::process::exit(1);
        }
    }
}
