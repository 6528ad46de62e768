//! raftlord benchmarks: load generators that start real clusters on loopback and measure them,
//! side by side with a peer where there is one.
//!
//! - `submit`: task submissions per second and latency on three raftlord nodes, against PUTs of
//!   the same size through etcd's HTTP gateway on three etcd members, same client, same
//!   concurrency, in the same run;
//! - `failover`: kill -9 the leader N times under a concurrent write load; time from the kill
//!   to the first acknowledged submission through a surviving node, then acknowledged writes
//!   lost, stored twice, and replicas that differ;
//! - `restart`: store N tasks, restart the cluster, time to serving and resident memory;
//! - `tasks`: tasks actually run: submit -> peon running latency with free slots, and the wall
//!   time for a batch of noop tasks to all succeed on three workers;
//! - `soak`: tasks completing continuously for a given time with short retentions; resident
//!   memory and snapshot size after the warm-up and at the end;
//! - `ingest`: rows/s of one ingestion (gzipped JSON lines and CSV to rolled-up Parquet) on
//!   one core, against DuckDB doing the same work on one thread;
//! - `segments`: a million segments published through task actions: publish rate, memory,
//!   query latency, snapshot size, restart and snapshot catch-up times, overshadow pass;
//! - `coordinator`: the Coordinator's historical-management run on a million segments and ten
//!   Historicals, in process: run time, memory of the replica view, re-replication after a
//!   Historical's loss.
//!
//! Every cluster lives in a temp dir and on loopback ports, and is stopped at the end.

mod chaos;
mod cluster;
mod coordinator;
mod ingest;
mod load;
mod parallel;
mod segments;
mod soak;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

// The allocator raftlord's binary (and so its peons) uses, for the in-process ingestion runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "raftlord-bench", about = "Benchmarks for raftlord")]
struct Cli {
    /// The raftlord binary; by default the one next to this benchmark.
    #[arg(long, global = true)]
    raftlord: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Submissions/s and p50/p99 on 3 raftlord nodes vs 3 etcd members.
    Submit {
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Skip the etcd side (when etcd is not installed).
        #[arg(long)]
        no_etcd: bool,
        /// The etcd binary.
        #[arg(long, default_value = "etcd")]
        etcd: String,
        /// Alternate raftlord and etcd this many times.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Submissions/s with users (HTTP Basic, role-checked) and TLS on against both off, side by
    /// side on fresh 3-node clusters.
    Secure {
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Users only, over plain HTTP.
        #[arg(long)]
        no_tls: bool,
    },
    /// Leader kill -9 to first acknowledged write, N times, under a write load; then lost and
    /// duplicated writes.
    Failover {
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Concurrent writers during the kills (half with ids, half keyed without).
        #[arg(long, default_value_t = 8)]
        writers: usize,
    },
    /// Network partitions (leader isolated, follower isolated, a bridge) under submissions,
    /// peons and lockers, in network namespaces (needs root): lost writes, lock exclusivity,
    /// publishes under released locks, tasks with two live peons.
    Partitions {
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Least time each cut is held, in ms.
        #[arg(long, default_value_t = 3000)]
        hold_ms: u64,
        #[arg(long, default_value_t = 4)]
        lockers: usize,
        #[arg(long, default_value_t = 4)]
        submitters: usize,
    },
    /// A follower's and then the leader's disk (each a small tmpfs) filled to the last byte
    /// and freed again (needs root): the answer clients get, catch-up and resume times, writes
    /// lost.
    DiskFull {
        #[arg(long, default_value_t = 160)]
        tmpfs_mb: u64,
        #[arg(long, default_value_t = 32)]
        floor_mb: u64,
    },
    /// Store N tasks, restart the cluster, measure time to serving and memory.
    Restart {
        #[arg(long, default_value_t = 100_000)]
        tasks: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
    },
    /// Submit -> RUNNING latency (one task at a time, free slots), then N noop tasks to all
    /// SUCCESS, on 3 nodes that are each a worker.
    Tasks {
        /// Latency samples.
        #[arg(long, default_value_t = 100)]
        samples: usize,
        /// Tasks in the throughput batch.
        #[arg(long, default_value_t = 1000)]
        tasks: usize,
        /// Slots per worker.
        #[arg(long, default_value_t = 4)]
        slots: u32,
        /// Noop runTime in ms (Druid treats 0 as its 2500 ms default, so 1 is the shortest).
        #[arg(long, default_value_t = 1)]
        run_time_ms: u64,
        /// Concurrent submitters for the batch.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Extra flags for every raftlord node, e.g. `--node-flag=--proposals-in-flight=2`.
        #[arg(long = "node-flag")]
        node_flags: Vec<String>,
    },
    /// One ingestion (gzipped JSON and CSV -> rollup -> Parquet) on one core, rows/s, against
    /// DuckDB on one thread (`pip install duckdb`).
    Ingest {
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Only raftlord, JSON lines only: for memory figures on large inputs.
        #[arg(long)]
        json_only: bool,
        /// Only raftlord (no DuckDB), on the formats chosen: for profiles of one format.
        #[arg(long)]
        raftlord_only: bool,
        /// One input format only: `json` or `csv` (both by default).
        #[arg(long, value_parser = ["json", "csv"])]
        format: Option<String>,
        /// Runs of each engine on each format, alternating; the medians are reported.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
    /// One index_parallel task over N files on three workers, in one peon and as N sub-tasks:
    /// the wall time of each and the speed-up.
    Parallel {
        #[arg(long, default_value_t = 2_000_000)]
        rows: u64,
        #[arg(long, default_value_t = 4)]
        parts: u64,
        /// Hashed partitioning into this many shards (two-phase parallel ingestion), instead
        /// of dynamic.
        #[arg(long)]
        hashed: Option<u32>,
    },
    /// Tasks completing continuously; memory and snapshot size at the start and the end.
    Soak {
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Clients, each keeping one task in flight.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Retention of complete tasks and audit records, in ms.
        #[arg(long, default_value_t = 60_000)]
        retention_ms: u64,
    },
    /// One historical-management run on N segments and H Historicals, in process.
    Coordinator {
        #[arg(long, default_value_t = 1_000_000)]
        segments: usize,
        #[arg(long, default_value_t = 10)]
        historicals: usize,
        #[arg(long, default_value_t = 100)]
        datasources: usize,
        /// Instead: three real nodes serving this many small segment files, and a leader kill -9.
        #[arg(long)]
        cluster: Option<usize>,
        /// With --cluster: kill the leader while the segments are still loading.
        #[arg(long)]
        mid_load: bool,
        /// Instead: N segments (10 partitions per hour) on H Historical processes that are no
        /// Raft members, beside three members; a Historical, then the leader, killed with -9.
        #[arg(long)]
        processes: bool,
        /// With --processes: the members' Raft election timeout (heartbeats at a quarter of it).
        #[arg(long, default_value_t = 200)]
        election_timeout_ms: u64,
    },
    /// Publish N segments across datasources through task actions; memory, query p99,
    /// snapshot, restart and catch-up times, overshadow pass.
    Segments {
        #[arg(long, default_value_t = 1_000_000)]
        segments: usize,
        #[arg(long, default_value_t = 100)]
        datasources: usize,
        /// Segments per publish action.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Concurrent publishers.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Extra flags for every raftlord node, e.g. `--node-flag=--snapshot-every=100`.
        #[arg(long = "node-flag")]
        node_flags: Vec<String>,
    },
}

fn raftlord_path(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name("raftlord");
    anyhow::ensure!(
        p.exists(),
        "no raftlord binary at {}; build it (cargo build) or pass --raftlord",
        p.display()
    );
    Ok(p)
}

/// Prints each violation a checker found and fails when there is any.
fn fail_on(violations: &[String]) -> anyhow::Result<()> {
    for v in violations {
        println!("VIOLATION: {v}");
    }
    anyhow::ensure!(violations.is_empty(), "{} violations", violations.len());
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let bin = raftlord_path(cli.raftlord)?;
    match cli.command {
        Cmd::Submit {
            clients,
            seconds,
            no_etcd,
            etcd,
            rounds,
        } => load::submit(&bin, clients, seconds, (!no_etcd).then_some(etcd), rounds).await,
        Cmd::Secure {
            clients,
            seconds,
            rounds,
            no_tls,
        } => load::secure(&bin, clients, seconds, rounds, !no_tls).await,
        Cmd::Failover { rounds, writers } => chaos::failover(&bin, rounds, writers).await,
        Cmd::Ingest {
            rows,
            json_only,
            raftlord_only,
            format,
            rounds,
        } => {
            let format = if json_only { Some("json".to_string()) } else { format };
            let duckdb = !(json_only || raftlord_only);
            tokio::task::spawn_blocking(move || ingest::run(rows, format.as_deref(), duckdb, rounds)).await?
        }
        Cmd::Parallel { rows, parts, hashed } => parallel::run(&bin, rows, parts, hashed).await,
        Cmd::Partitions {
            rounds,
            hold_ms,
            lockers,
            submitters,
        } => {
            let opts = raftlord_harness::partitions::Options {
                rounds,
                hold: std::time::Duration::from_millis(hold_ms),
                lockers,
                submitters,
                ..Default::default()
            };
            let report = tokio::task::spawn_blocking(move || raftlord_harness::partitions::run(&bin, &opts)).await??;
            for line in &report.rounds_log {
                println!("{line}");
            }
            println!("{}", report.summary());
            fail_on(&report.violations())
        }
        Cmd::DiskFull { tmpfs_mb, floor_mb } => {
            let opts = raftlord_harness::diskfull::Options { tmpfs_mb, floor_mb };
            let report = tokio::task::spawn_blocking(move || raftlord_harness::diskfull::run(&bin, &opts)).await??;
            println!("{}", report.summary());
            fail_on(&report.violations())
        }
        Cmd::Restart { tasks, clients } => load::restart(&bin, tasks, clients).await,
        Cmd::Tasks {
            samples,
            tasks,
            slots,
            run_time_ms,
            clients,
            node_flags,
        } => load::tasks(&bin, samples, tasks, slots, run_time_ms, clients, &node_flags).await,
        Cmd::Soak {
            seconds,
            clients,
            retention_ms,
        } => soak::run(&bin, seconds, clients, retention_ms).await,
        Cmd::Coordinator {
            segments,
            historicals,
            datasources,
            processes: true,
            election_timeout_ms,
            ..
        } => coordinator::processes(&bin, segments, historicals, datasources, election_timeout_ms).await,
        Cmd::Coordinator {
            segments,
            historicals,
            datasources,
            cluster: Some(n),
            mid_load,
            ..
        } => {
            let _ = (segments, historicals, datasources);
            coordinator::failover(&bin, n, mid_load).await
        }
        Cmd::Coordinator {
            segments,
            historicals,
            datasources,
            cluster: None,
            ..
        } => coordinator::run(segments, historicals, datasources),
        Cmd::Segments {
            segments,
            datasources,
            batch,
            clients,
            node_flags,
        } => segments::run(&bin, segments, datasources, batch, clients, &node_flags).await,
    }
}
