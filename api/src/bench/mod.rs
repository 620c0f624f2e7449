//! Benchmark commands (`flowforge bench …`). Figures belong in benchmarks, not in
//! timed tests; each prints `bench=… backend=… metric=… value=… unit=…` lines.

pub mod runs;
pub mod store;
pub mod team;
