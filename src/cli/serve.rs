//! `poshsm serve` and `poshsm lmk init`: data directory, sealed LMK, config,
//! certificates, then `server::serve` until SIGTERM/SIGINT.

use crate::hsm::{Hsm, HsmConfig};
use crate::keys::lmk::{self, KdfParams, Lmk, LmkFile, SealedLmk};
use crate::server::{self, AccessConfig, TlsMaterial};
use crate::store::Store;
use secrecy::SecretString;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The daemon's config file (TOML). Every section is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    pub hsm: HsmConfig,
    /// Client certificate CN → role (`posp`, `admin`, `auditor`).
    pub access: Option<AccessConfig>,
    pub tls: TlsPaths,
    /// The payShield-compatible host-command port (docs/payshield.md).
    pub payshield: crate::payshield::PayshieldConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsPaths {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Parses a config file's text; errors name the problem.
pub fn parse_config(text: &str) -> Result<ConfigFile, String> {
    toml::from_str(text).map_err(|e| format!("config: {e}"))
}

pub struct ServeOptions {
    pub data_dir: PathBuf,
    pub listen: String,
    pub config: Option<PathBuf>,
    pub dev: bool,
    /// Prometheus text at http://ADDR/metrics.
    pub metrics_listen: Option<String>,
    /// The payShield port's address (switches it on; overrides `[payshield] listen`).
    pub payshield_listen: Option<String>,
    /// gRPC I/O threads (`None`: one per CPU; 0: the shared runtime).
    pub io_threads: Option<usize>,
}

pub const SEALED_FILE: &str = "lmk.sealed";

fn banner_dev() {
    eprintln!("==========================================================================");
    eprintln!(" WARNING: poshsm is running in --dev mode.");
    eprintln!(" The LMK is sealed under a PUBLIC development passphrase and the");
    eprintln!(" certificates come from a throw-away local CA. Never load real keys.");
    eprintln!("==========================================================================");
    tracing::warn!("dev mode: LMK sealed under the public dev passphrase; never load real keys");
}

/// Reads custodian passphrases: `POSHSM_LMK_PASSPHRASES` (one per line) or the terminal.
pub fn read_passphrases(n: usize, confirm: bool) -> Result<Vec<SecretString>, String> {
    if let Ok(text) = std::env::var("POSHSM_LMK_PASSPHRASES") {
        let list = lmk::passphrases_from_lines(&text);
        if list.len() != n {
            return Err(format!(
                "POSHSM_LMK_PASSPHRASES holds {} passphrases (one per line); {n} are needed",
                list.len()
            ));
        }
        return Ok(list);
    }
    let mut out = Vec::new();
    for i in 1..=n {
        let p = rpassword::prompt_password(format!("custodian {i} passphrase: "))
            .map_err(|e| format!("cannot read a passphrase from the terminal ({e}); set POSHSM_LMK_PASSPHRASES instead"))?;
        if p.chars().count() < 12 {
            return Err(format!(
                "custodian {i}'s passphrase is shorter than 12 characters"
            ));
        }
        if confirm {
            let again = rpassword::prompt_password(format!("custodian {i} passphrase (again): "))
                .map_err(|e| e.to_string())?;
            if again != p {
                return Err(format!("custodian {i}'s passphrases do not match"));
            }
        }
        out.push(SecretString::from(p));
    }
    Ok(out)
}

fn write_sealed(path: &Path, sealed: &SealedLmk) -> Result<(), String> {
    lmk::write_file_atomic(path, &sealed.to_json())
        .map_err(|e| format!("write {}: {e}", path.display()))
}

/// `poshsm lmk init`: generates and seals a new LMK. Refuses to overwrite one.
pub fn lmk_init(data_dir: &Path, custodians: usize) -> Result<String, String> {
    if custodians < 2 {
        return Err("at least 2 custodians are required (--custodians N)".into());
    }
    std::fs::create_dir_all(data_dir).map_err(|e| format!("create {}: {e}", data_dir.display()))?;
    let path = data_dir.join(SEALED_FILE);
    if path.exists() {
        return Err(format!(
            "{} already exists: an LMK is never overwritten",
            path.display()
        ));
    }
    let pw = read_passphrases(custodians, true)?;
    let lmk = Lmk::generate();
    let sealed = lmk
        .seal(&pw, KdfParams::PRODUCTION)
        .map_err(|e| e.to_string())?;
    write_sealed(&path, &sealed)?;
    Ok(lmk.kcv_hex(8))
}

/// Creates what a first `--dev` run needs; leaves existing files alone.
pub fn dev_setup(data_dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(data_dir).map_err(|e| format!("create {}: {e}", data_dir.display()))?;
    let certs = data_dir.join("certs");
    if !certs.join("ca.pem").exists() {
        let pki = crate::devcerts::generate("poshsm dev CA", &["admin", "posp", "auditor"])
            .map_err(|e| e.to_string())?;
        crate::devcerts::write(&certs, &pki).map_err(|e| format!("write certificates: {e}"))?;
    }
    let sealed = data_dir.join(SEALED_FILE);
    if !sealed.exists() {
        let lmk = Lmk::generate();
        let s = lmk
            .seal(&lmk::dev_passphrases(), KdfParams::DEV)
            .map_err(|e| e.to_string())?;
        write_sealed(&sealed, &s)?;
    }
    Ok(())
}

/// Opens the module: finishes or abandons an LMK rotation a crash
/// interrupted, unseals the LMK set, opens the store (self-tests run in
/// `Hsm::with_lmks`) and audits any recovery.
pub fn open_hsm(data_dir: &Path, dev: bool, config: HsmConfig) -> Result<Hsm, String> {
    let sealed_path = data_dir.join(SEALED_FILE);
    if !sealed_path.exists() {
        return Err(format!("cannot read the sealed LMK {}: no such file (create one with `poshsm lmk init --data-dir {}`, or use --dev)", sealed_path.display(), data_dir.display()));
    }
    let store = Store::open(&data_dir.join("db")).map_err(|e| format!("open store: {e}"))?;
    let recovery = crate::hsm::recover_lmk_file(&sealed_path, &store)?;
    let text = std::fs::read_to_string(&sealed_path)
        .map_err(|e| format!("cannot read the sealed LMK {}: {e}", sealed_path.display()))?;
    let file = LmkFile::from_json(&text).map_err(|e| e.to_string())?;
    let pw = if dev {
        lmk::dev_passphrases()
    } else {
        read_passphrases(file.current.custodians as usize, false)?
    };
    let mut lmks = file.unseal(&pw).map_err(|e| match e {
        lmk::LmkError::UnsealFailed if file.previous.is_some() => format!(
            "{e}. The LMK was rotated on {}: give the passphrases the custodians chose then",
            crate::fmt_utc(file.previous_since_unix)
        ),
        e => e.to_string(),
    })?;
    drop(pw);
    let re_retired = crate::hsm::reconcile_retired(&sealed_path, &mut lmks, &store)?;
    let sink = crate::hsm::LmkFileSink {
        path: sealed_path,
        kdf: file.current.kdf_params,
        dev,
    };
    let hsm = Hsm::with_lmks(lmks, Some(sink), store, config);
    // A module in ALARM (e.g. a broken audit chain) may refuse the write:
    // the recovery is in the log then, and the daemon still starts to show why.
    if let Err(e) = hsm.audit_lmk_recovery(&recovery, re_retired.as_deref()) {
        tracing::error!(error = %e, ?recovery, "the LMK recovery at start could not be audited");
    }
    Ok(hsm)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown requested: finishing in-flight calls");
}

pub async fn serve(opts: ServeOptions) -> Result<(), String> {
    if opts.dev {
        banner_dev();
        dev_setup(&opts.data_dir)?;
    }
    let config = match &opts.config {
        Some(p) => parse_config(
            &std::fs::read_to_string(p).map_err(|e| format!("read {}: {e}", p.display()))?,
        )?,
        None => ConfigFile::default(),
    };
    let certs = opts.data_dir.join("certs");
    let pick = |p: &Option<PathBuf>, name: &str| p.clone().unwrap_or_else(|| certs.join(name));
    let read = |p: PathBuf| std::fs::read(&p).map_err(|e| format!("read {}: {e}", p.display()));
    let tls = TlsMaterial {
        ca_pem: read(pick(&config.tls.ca, "ca.pem"))?,
        cert_pem: read(pick(&config.tls.cert, "server.pem"))?,
        key_pem: read(pick(&config.tls.key, "server.key"))?,
    };
    let data_dir = opts.data_dir.clone();
    let dev = opts.dev;
    let hsm_config = config.hsm.clone();
    let hsm = tokio::task::spawn_blocking(move || open_hsm(&data_dir, dev, hsm_config))
        .await
        .map_err(|e| e.to_string())??;
    let status = hsm.status();
    if status.state != "OK" {
        tracing::error!(reason = %status.reason, "module is in ALARM: crypto is refused until it is resolved");
    }
    let listener = tokio::net::TcpListener::bind(&opts.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", opts.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, lmk_kcv = %status.lmk_kcv, "poshsm serving");
    println!("poshsm listening on {addr}");
    let metrics = match &opts.metrics_listen {
        Some(a) => {
            let m = Arc::new(server::metrics::Metrics::new());
            let l = tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| format!("cannot listen for metrics on {a}: {e}"))?;
            let bound = l.local_addr().map_err(|e| e.to_string())?;
            tracing::info!(addr = %bound, "metrics at /metrics");
            tokio::spawn(server::metrics::serve_metrics(
                l,
                m.clone(),
                shutdown_signal(),
            ));
            Some(m)
        }
        None => None,
    };
    let hsm = Arc::new(hsm);
    let mut ps = config.payshield.clone();
    if let Some(a) = &opts.payshield_listen {
        ps.enabled = true;
        ps.listen = a.clone();
    }
    if ps.enabled {
        ps.validate()?;
        let ps_tls = if ps.tls {
            let or = |own: &Option<PathBuf>, daemon: &Option<PathBuf>, name: &str| {
                own.clone().unwrap_or_else(|| pick(daemon, name))
            };
            Some(TlsMaterial {
                ca_pem: read(or(&ps.tls_ca, &config.tls.ca, "ca.pem"))?,
                cert_pem: read(or(&ps.tls_cert, &config.tls.cert, "server.pem"))?,
                key_pem: read(or(&ps.tls_key, &config.tls.key, "server.key"))?,
            })
        } else {
            None
        };
        let l = tokio::net::TcpListener::bind(&ps.listen)
            .await
            .map_err(|e| format!("cannot listen for payShield on {}: {e}", ps.listen))?;
        let bound = l.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(addr = %bound, tls = ps.tls, "payShield host-command port");
        println!("poshsm payshield listening on {bound}");
        let served = hsm.clone();
        tokio::spawn(async move {
            let stop = shutdown_signal();
            if let Err(e) = crate::payshield::serve(l, served, ps, ps_tls, stop).await {
                tracing::error!(error = %e, "payShield port stopped");
            }
        });
    }
    let io_threads = opts
        .io_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tracing::info!(
        io_threads,
        "gRPC connections served on I/O threads (0: shared runtime)"
    );
    server::serve(
        listener,
        hsm,
        tls,
        config.access.unwrap_or_default(),
        metrics,
        io_threads,
        shutdown_signal(),
    )
    .await
    .map_err(|e| e.to_string())
}
