//! # poshsm — a software payment HSM
//!
//! poshsm owns the key hierarchy of a card-present acquirer (LMK → TMK/ZMK →
//! PIK/MAK/TDK/ZPK/ZAK), hands out daily working keys at terminal sign-in,
//! translates PIN blocks and generates/verifies MACs — and never lets a clear
//! key or a clear PIN leave it.
//!
//! ## Map of the modules (see ARCHITECTURE.md for the rules between them)
//!
//! | module | what it is | may call |
//! |---|---|---|
//! | [`crypto`] | hazmat primitives: ciphers, KCVs, ISO 9564 PIN blocks, MACs | — |
//! | [`keys`] | key types and usage rules, the sealed LMK, LMK key blocks, the key cache | `crypto`, `keyblocks`, `sys` |
//! | [`store`] | sled trees for keys, aliases, terminals and the audit hash chain; sees key blocks only | — |
//! | [`hsm`] | the transport-free core: one method per operation, `Result<_, HsmError>` | `keys`, `crypto`, `store` |
//! | `server` | tonic services over mutual TLS, role checks, `HsmError` → `Status` | `hsm` |
//! | `cli` | `serve`, `admin …`, `lmk init`, `bench`, `simulate` | `server`, `proto` |
//! | [`hash`] | the keyed hash of the in-memory maps the hot path reads | — |
//! | `sys` | the only `unsafe`: locked non-dumpable pages, core dumps off | libc |
//!
//! ## Invariants
//!
//! - Clear key bytes exist only inside `crypto` and `keys` (in [`keys::LoadedKey`]
//!   on locked pages, and transiently in zeroizing buffers). `store` sees LMK
//!   key blocks; `server` never touches key bytes.
//! - Every key at rest and every `key_block` handed out is a TR-31 version D block
//!   under the LMK; operations check its header (usage, type), not a side table.
//! - No error, log line or `Debug` output contains a clear key or PIN.
#![deny(unsafe_code)]

pub mod cli;
pub mod crypto;
pub mod devcerts;
pub mod fuzzing;
pub mod hash;
pub mod hsm;
pub mod keys;
pub mod payshield;
pub mod pinpad;
pub mod server;
pub mod store;
pub mod sys;
#[cfg(feature = "testing")]
pub mod testing;

pub mod proto {
    //! Generated gRPC types and services (package `poshsm.v1`).
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("poshsm.v1");
    /// Encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("poshsm_descriptor");
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// RFC 3339 UTC (`YYYY-MM-DDTHH:MM:SSZ`) for a Unix time (proleptic Gregorian; days to
/// civil date after Howard Hinnant's `civil_from_days`).
pub fn fmt_utc(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn utc_formatting_matches_known_dates() {
        // Reference values from `date -u -d @N` (GNU coreutils).
        assert_eq!(super::fmt_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::fmt_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::fmt_utc(1_795_375_383), "2026-11-22T19:23:03Z");
    }
}
