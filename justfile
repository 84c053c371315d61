# Outrider developer recipes. `just --list` shows them.

default:
    @just --list

# Format the workspace.
fmt:
    cargo fmt --all

# Check format and lints, as CI does.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# The whole test suite (root-only tests print "skipped: needs root" without root).
test:
    cargo test --workspace

# What CI runs (installs test tools when missing).
ci:
    bash .ci/run

# The demo mesh, in one process.
demo:
    cargo run --release -- demo

# criterion micro-benchmarks.
bench-micro:
    cargo bench -p outrider-benches

# The side-by-side load harness (HAProxy, nginx, Envoy, direct, splice floor).
bench *ARGS:
    python3 benches/harness/run.py {{ARGS}}

# A short smoke run of the load harness (what CI runs).
bench-smoke:
    python3 benches/harness/run.py --smoke

# Fuzz one target (needs nightly and cargo-fuzz): just fuzz config_parse 60
fuzz TARGET="config_parse" SECONDS="60":
    cd fuzz && cargo +nightly fuzz run {{TARGET}} -- -max_total_time={{SECONDS}}

# Every fuzz target for a few seconds (what CI runs).
fuzz-smoke:
    bash fuzz/smoke.sh

# cargo-deny: licenses, bans (ring, OpenSSL), advisories, duplicates.
deny:
    cargo deny check

# Build every fuzz target once (stable check that they compile).
fuzz-check:
    cd fuzz && cargo check

# Re-profile which functions a running sidecar executes and relink them together at the front
# of .text (crates/outrider/link/symbol-order.txt; needs valgrind, curl, h2load). See
# docs/benchmarks.md, "Idle memory after start-up".
layout:
    cargo build --release -p outrider
    python3 benches/layout/profile.py
    cargo build --release -p outrider
