//! Benchmark commands (`flowforge bench …`). Figures belong in benchmarks, not in
//! timed tests; each prints `bench=… backend=… metric=… value=… unit=…` lines.

pub mod runs;
pub mod store;
pub mod team;

/// Runs `write(n)` for every `n` in `0..count`, spread over `writers` concurrent tasks
/// (writer `w` takes `w`, `w + writers`, …), the way the seeding of each benchmark
/// fills a log with many concurrent appenders.
pub(crate) async fn split_among_writers<F, Fut>(
    count: u64,
    writers: u64,
    write: F,
) -> anyhow::Result<()>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let writers = writers.max(1);
    let write = std::sync::Arc::new(write);
    let mut handles = Vec::new();
    for w in 0..writers {
        let write = write.clone();
        handles.push(tokio::spawn(async move {
            let mut n = w;
            while n < count {
                write(n).await?;
                n += writers;
            }
            anyhow::Ok(())
        }));
    }
    for handle in handles {
        handle.await??;
    }
    Ok(())
}
