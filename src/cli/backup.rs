//! `poshsm backup` and `poshsm restore`: offline snapshots of a data dir's
//! store (see `store::snapshot` for the format). Both work without the LMK's
//! passphrases: a snapshot holds LMK key blocks, never a clear key, and the
//! LMK is named by the public KCV in `lmk.sealed`.
//!
//! - backup needs the daemon stopped: it opens the store exclusively (sled's
//!   file lock), so the snapshot is consistent across trees.
//! - restore needs a data dir holding the *same* `lmk.sealed` and no store
//!   yet; it verifies the snapshot completely before writing anything.

use super::serve::SEALED_FILE;
use crate::keys::LmkFile;
use crate::store::audit::AuditDraft;
use crate::store::snapshot::{self, Summary};
use crate::store::{Batch, Store};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct BackupArgs {
    /// Data dir of the node to back up (the daemon must be stopped).
    #[arg(long, default_value = "./poshsm-data")]
    pub data_dir: PathBuf,
    /// Snapshot file to write (JSON lines; mode 0600).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// Data dir to restore into: it must hold the source node's lmk.sealed and no store yet.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Snapshot written by `poshsm backup`.
    #[arg(long)]
    pub from: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A progress bar on stderr (drawn only when stderr is a terminal).
pub(crate) fn progress_bar(len: u64, msg: &str, hidden: bool) -> ProgressBar {
    let pb = if hidden {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr())
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {msg:<12} [{bar:30.cyan/blue}] {human_pos}/{human_len} ({per_sec}, eta {eta})",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(msg.to_string());
    if !hidden {
        pb.enable_steady_tick(Duration::from_millis(200));
    }
    pb
}

/// The public KCV recorded in `DIR/lmk.sealed`.
fn sealed_kcv(data_dir: &Path, role: &str) -> Result<String, String> {
    let path = data_dir.join(SEALED_FILE);
    let next = crate::hsm::lmk_next_path(&path);
    if next.exists() {
        return Err(format!(
            "{} exists: an LMK rotation was interrupted. Start the daemon once (it finishes or abandons the rotation), stop it, then run this again",
            next.display()
        ));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| match role {
        "restore" => format!(
            "cannot read {}: {e}. Copy the source node's sealed LMK first \
             (`cp SOURCE_DIR/{SEALED_FILE} {}/`): the snapshot holds key blocks under that LMK, never the LMK itself",
            path.display(),
            data_dir.display()
        ),
        _ => format!(
            "cannot read {}: {e} (is {} a poshsm data dir?)",
            path.display(),
            data_dir.display()
        ),
    })?;
    let sealed = LmkFile::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(sealed.kcv().to_ascii_uppercase())
}

fn open_exclusive(db: &Path) -> Result<Store, String> {
    Store::open(db).map_err(|e| {
        format!(
            "cannot open the store {}: {e}. A backup needs the daemon stopped \
             (e.g. `systemctl stop poshsm`), so that the snapshot is consistent",
            db.display()
        )
    })
}

/// What `poshsm backup` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupReport {
    pub file: PathBuf,
    pub bytes: u64,
    #[serde(flatten)]
    pub summary: Summary,
}

/// `poshsm backup`: a consistent snapshot of a stopped node's store.
pub fn backup(
    data_dir: &Path,
    out: &Path,
    force: bool,
    show_progress: bool,
) -> Result<BackupReport, String> {
    let kcv = sealed_kcv(data_dir, "backup")?;
    let db = data_dir.join("db");
    if !db.exists() {
        return Err(format!(
            "no store at {}: nothing to back up (has this node ever run?)",
            db.display()
        ));
    }
    if out.exists() && !force {
        return Err(format!(
            "{} exists: choose another --out, or pass --force to replace it",
            out.display()
        ));
    }
    let store = open_exclusive(&db)?;
    let pb = progress_bar(snapshot::record_count(&store), "backup", !show_progress);
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot".into());
    let tmp = out.with_file_name(format!(".{name}.tmp"));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let file = opts
        .open(&tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let result = snapshot::export(&store, &kcv, &mut w, &mut |n| pb.set_position(n));
    pb.finish_and_clear();
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            drop(w);
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("backup failed: {e}"));
        }
    };
    let file = w
        .into_inner()
        .map_err(|e| format!("write {}: {e}", tmp.display()))?;
    file.sync_all()
        .map_err(|e| format!("sync {}: {e}", tmp.display()))?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    drop(file);
    std::fs::rename(&tmp, out).map_err(|e| format!("rename to {}: {e}", out.display()))?;
    if let Some(dir) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    // Who took a backup, and of what, belongs in the node's own audit chain.
    let audited = store
        .commit(Batch {
            audit: vec![AuditDraft {
                actor: "local-cli".into(),
                operation: "Backup".into(),
                key_id: String::new(),
                outcome: "OK".into(),
                detail: format!(
                    "snapshot_sha256={} keys={} terminals={} audit_events={}",
                    summary.sha256,
                    summary.counts.keys,
                    summary.counts.terminals,
                    summary.counts.audit
                ),
            }],
            ..Default::default()
        })
        .and_then(|_| store.flush());
    if let Err(e) = audited {
        eprintln!("poshsm: warning: the snapshot is written, but the Backup audit event could not be recorded: {e}");
    }
    Ok(BackupReport {
        file: out.to_path_buf(),
        bytes,
        summary,
    })
}

/// What `poshsm restore` loaded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {
    pub data_dir: PathBuf,
    #[serde(flatten)]
    pub summary: Summary,
}

/// `poshsm restore`: loads a snapshot into an empty store beside the same sealed LMK.
pub fn restore(data_dir: &Path, from: &Path, show_progress: bool) -> Result<RestoreReport, String> {
    let kcv = sealed_kcv(data_dir, "restore")?;
    let total = std::fs::metadata(from)
        .map_err(|e| format!("cannot read the snapshot {}: {e}", from.display()))?
        .len();
    // Lines are ~300–600 bytes: a rough bar length; the position is exact.
    let pb = progress_bar((total / 400).max(1), "verify", !show_progress);
    let mut phase = "verify";
    let summary = snapshot::restore(
        from,
        &data_dir.join("db"),
        &kcv,
        "local-cli",
        &mut |p, n| {
            if p != phase {
                phase = p;
                pb.set_message(p);
            }
            if n > pb.length().unwrap_or(0) {
                pb.set_length(n);
            }
            pb.set_position(n);
        },
    );
    pb.finish_and_clear();
    let summary = summary.map_err(|e| format!("restore refused: {e}"))?;
    Ok(RestoreReport {
        data_dir: data_dir.to_path_buf(),
        summary,
    })
}

fn counts_line(s: &Summary) -> String {
    format!(
        "{} keys, {} aliases, {} terminals, {} audit events",
        s.counts.keys, s.counts.aliases, s.counts.terminals, s.counts.audit
    )
}

pub async fn run_backup(args: BackupArgs) -> Result<(), String> {
    let a = args.clone();
    let show = !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let r = tokio::task::spawn_blocking(move || backup(&a.data_dir, &a.out, a.force, show))
        .await
        .map_err(|e| e.to_string())??;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?
        );
    } else {
        let mut o = std::io::stdout().lock();
        let _ = writeln!(
            o,
            "snapshot written: {} ({} bytes)",
            r.file.display(),
            r.bytes
        );
        let _ = writeln!(o, "  {}", counts_line(&r.summary));
        let _ = writeln!(o, "  LMK KCV   {}", r.summary.header.lmk_kcv);
        let _ = writeln!(o, "  SHA-256   {}", r.summary.sha256);
        let _ = writeln!(
            o,
            "It holds key blocks under the LMK, no clear key. Keep it with {}/{SEALED_FILE}\n\
             (restore needs both), but store it apart from the custodians' passphrases.",
            args.data_dir.display()
        );
    }
    Ok(())
}

pub async fn run_restore(args: RestoreArgs) -> Result<(), String> {
    let a = args.clone();
    let show = !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let r = tokio::task::spawn_blocking(move || restore(&a.data_dir, &a.from, show))
        .await
        .map_err(|e| e.to_string())??;
    if args.json {
        let mut v = serde_json::to_value(&r).map_err(|e| e.to_string())?;
        v["restored"] = json!(true);
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
        );
    } else {
        println!(
            "restored into {}: {}",
            r.data_dir.display(),
            counts_line(&r.summary)
        );
        println!(
            "  snapshot taken at unix time {} by poshsm {}, SHA-256 {}",
            r.summary.header.created_unix, r.summary.header.poshsm_version, r.summary.sha256
        );
        println!("  audit chain verified; a Restore event was appended to it");
        println!(
            "Next: give the node its certificates ({}/certs or [tls] in --config) and start it:\n  \
             poshsm serve --data-dir {}\nIts power-on self-test unwraps every restored key block under the LMK.",
            r.data_dir.display(),
            r.data_dir.display()
        );
    }
    Ok(())
}
