//! The `poshsm` binary: parses the command line and hands over to `poshsm::cli`.
//! Core dumps are switched off here (and only here) before any key is loaded.

use clap::Parser;

fn main() {
    let cli = poshsm::cli::Cli::parse();
    if matches!(cli.command, poshsm::cli::Command::Serve { .. }) {
        if let Err(e) = poshsm::sys::disable_core_dumps() {
            eprintln!("poshsm: warning: could not disable core dumps: {e}");
        }
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("POSHSM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut builder = if cli.wants_current_thread() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("poshsm: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(msg) = rt.block_on(poshsm::cli::run(cli)) {
        eprintln!("poshsm: {msg}");
        std::process::exit(1);
    }
}
