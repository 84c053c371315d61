//! Benchmarks for Outrider: criterion micro-benchmarks (`benches/`), the splice floor binary
//! (`src/bin/splice.rs`) and the side-by-side load harness (`harness/run.py`).
