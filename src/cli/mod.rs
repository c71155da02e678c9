//! The `poshsm` command line: `serve`, `lmk init`, `admin …`, `completions`.
//! Each command is a thin adapter: the daemon over `server`, the admin
//! commands over the gRPC API (never the store directly).

pub mod admin;
pub mod backup;
pub mod bench;
pub mod client;
pub mod serve;
pub mod simulate;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "poshsm",
    version,
    about = "A software payment HSM: key hierarchy, sign-in, PIN translation and MACs over mutual-TLS gRPC"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The open-loop load generator runs on one thread (a current-thread
    /// runtime): its pacer, requests, HTTP/2 and TLS tasks then hand work to
    /// each other without a cross-thread wake-up, which would otherwise add to
    /// the latency it measures. Everything else gets the multi-thread runtime.
    pub fn wants_current_thread(&self) -> bool {
        matches!(&self.command, Command::Bench(a) if a.rate.is_some_and(|r| r > 0))
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon.
    Serve {
        #[arg(long, default_value = "./poshsm-data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: String,
        /// TOML config: [hsm] policy, [access] certificate CN → role, [tls] paths.
        #[arg(long)]
        config: Option<PathBuf>,
        /// First run creates the data dir, dev certificates and an LMK sealed under a public dev passphrase.
        #[arg(long)]
        dev: bool,
        /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP; bind to loopback or a private network).
        #[arg(long)]
        metrics_listen: Option<String>,
        /// Also serve the payShield-compatible host-command port on ADDR (plain TCP unless
        /// [payshield] tls = true: keep it on loopback; see docs/payshield.md).
        #[arg(long)]
        payshield_listen: Option<String>,
        /// Threads that serve gRPC connections, each with its own runtime; a new
        /// connection goes to the one with the fewest open. Default: one per CPU.
        /// 0 serves them on the shared work-stealing runtime instead.
        #[arg(long, value_name = "N")]
        io_threads: Option<usize>,
    },
    /// LMK ceremony.
    Lmk {
        #[command(subcommand)]
        command: LmkCommand,
    },
    /// Administer a running daemon over mutual TLS.
    Admin(admin::AdminArgs),
    /// Load generator: fixtures through the admin API, then tonic clients over mTLS.
    Bench(bench::BenchArgs),
    /// Offline: fill a stopped daemon's store with N signed-in terminals (benchmarks).
    Populate {
        #[arg(long, default_value = "./poshsm-data")]
        data_dir: PathBuf,
        #[arg(long)]
        terminals: usize,
        /// The store's LMK is sealed under the dev passphrase.
        #[arg(long)]
        dev: bool,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// A POSP and N terminals running a business day (sign-ins, purchases, expected failures)
    /// against an in-process daemon, or a running one with --addr.
    Simulate(simulate::SimulateArgs),
    /// Offline: a consistent snapshot of a stopped node's store (key blocks, terminals, aliases,
    /// audit chain, the LMK's KCV; no clear key).
    Backup(backup::BackupArgs),
    /// Offline: load a snapshot into an empty store whose data dir holds the same lmk.sealed.
    Restore(backup::RestoreArgs),
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
pub enum LmkCommand {
    /// Generate a new LMK and seal it under the custodians' passphrases
    /// (read without echo, or from POSHSM_LMK_PASSPHRASES, one per line).
    Init {
        #[arg(long, default_value = "./poshsm-data")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 2)]
        custodians: usize,
    },
}

/// Runs a parsed command; the error is the message for stderr.
pub async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve {
            data_dir,
            listen,
            config,
            dev,
            metrics_listen,
            payshield_listen,
            io_threads,
        } => {
            serve::serve(serve::ServeOptions {
                data_dir,
                listen,
                config,
                dev,
                metrics_listen,
                payshield_listen,
                io_threads,
            })
            .await
        }
        Command::Lmk {
            command:
                LmkCommand::Init {
                    data_dir,
                    custodians,
                },
        } => {
            let kcv = tokio::task::spawn_blocking(move || serve::lmk_init(&data_dir, custodians))
                .await
                .map_err(|e| e.to_string())??;
            println!("LMK generated and sealed; check value {kcv}");
            Ok(())
        }
        Command::Admin(args) => admin::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Simulate(args) => simulate::run(args).await,
        Command::Backup(args) => backup::run_backup(args).await,
        Command::Restore(args) => backup::run_restore(args).await,
        Command::Populate {
            data_dir,
            terminals,
            dev,
            threads,
        } => {
            let msg = tokio::task::spawn_blocking(move || {
                bench::populate(&data_dir, dev, terminals, threads)
            })
            .await
            .map_err(|e| e.to_string())??;
            println!("{msg}");
            Ok(())
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "poshsm", &mut std::io::stdout());
            Ok(())
        }
    }
}
