//! Links the functions a running sidecar executes together at the front of `.text`.
//!
//! The kernel maps a 64 KiB window of the executable around each code page a process touches,
//! so code scattered over the 9 MB text keeps most of it resident. `link/symbol-order.txt`
//! (written by `benches/layout/profile.py` from a callgrind run) lists the executed functions,
//! hottest first; lld places them in that order. Names missing from the binary are skipped, so
//! a stale list costs locality, never correctness.
//!
//! Applied to release builds for `x86_64-unknown-linux-gnu`, whose default linker is rust-lld,
//! and only when no other linker is configured (in the cargo config or in RUSTFLAGS). `OUTRIDER_SYMBOL_ORDER=0` turns it off;
//! `OUTRIDER_SYMBOL_ORDER=1` forces it on another target whose linker is lld.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=link/symbol-order.txt");
    println!("cargo:rerun-if-env-changed=OUTRIDER_SYMBOL_ORDER");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let forced = match env::var("OUTRIDER_SYMBOL_ORDER").as_deref() {
        Ok("0") => return,
        Ok("1") => true,
        _ => false,
    };
    let target = env::var("TARGET").unwrap_or_default();
    let release = env::var("PROFILE").as_deref() == Ok("release");
    // A linker chosen in the cargo config (RUSTC_LINKER) or in RUSTFLAGS (-C linker=...,
    // linker-flavor, link-self-contained) may be one that does not know the option.
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let default_lld = target == "x86_64-unknown-linux-gnu"
        && env::var_os("RUSTC_LINKER").is_none()
        && !flags.contains("link");
    if !(forced || (release && default_lld)) {
        return;
    }
    let dir = env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let order = Path::new(&dir).join("link").join("symbol-order.txt");
    if !order.is_file() {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=outrider=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bin=outrider=-Wl,--no-warn-symbol-ordering");
}
