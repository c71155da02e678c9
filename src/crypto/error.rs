//! The one error type of the crypto layer, with a stable reason code per variant.
//!
//! Messages name the problem and the lengths involved, never a key byte, a PIN digit or
//! a decrypted PIN block: every payload is a length, an algorithm or a `&'static str`.

use super::cipher::Algorithm;

/// Why a crypto primitive refused its input.
///
/// `Display` is safe to log and to return to a client; [`CryptoError::reason`] is the stable
/// machine-readable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The key has the wrong length for its algorithm.
    #[error("invalid key length for {algorithm}: expected {expected} bytes, got {actual}")]
    InvalidKeyLength {
        algorithm: Algorithm,
        expected: usize,
        actual: usize,
    },
    /// A key of this length cannot be used by the operation (e.g. X9.19 with an 8-byte key).
    #[error("invalid key length for {operation}: {actual} bytes")]
    UnusableKeyLength {
        operation: &'static str,
        actual: usize,
    },
    /// Data, IV or block length does not fit the operation.
    #[error("invalid data length for {operation}: {actual} bytes, {requirement}")]
    InvalidDataLength {
        operation: &'static str,
        requirement: &'static str,
        actual: usize,
    },
    /// A decoded PIN block is not well formed (never says which digits it held).
    #[error("invalid PIN block: {0}")]
    InvalidPinBlock(&'static str),
    /// A PAN that is not 12–19 decimal digits, or a missing PAN.
    #[error("invalid PAN: {0}")]
    InvalidPan(&'static str),
    /// A PIN that is not 4–12 decimal digits.
    #[error("invalid PIN: {0}")]
    InvalidPin(&'static str),
    /// A DES key part is weak or semi-weak, or TDES degenerates to single DES.
    #[error("weak DES key")]
    WeakKey,
    /// A DES-family key does not have odd parity.
    #[error("DES key does not have odd parity")]
    BadParity,
    /// The combination of algorithm and operation is not supported.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// The operating system's random number generator failed.
    #[error("OS random number generator failed")]
    RngFailure,
}

impl CryptoError {
    /// Stable reason code, e.g. `"INVALID_PIN_BLOCK"`; the server maps these into
    /// `google.rpc.ErrorInfo`.
    pub fn reason(&self) -> &'static str {
        match self {
            CryptoError::InvalidKeyLength { .. } | CryptoError::UnusableKeyLength { .. } => {
                "INVALID_KEY_LENGTH"
            }
            CryptoError::InvalidDataLength { .. } => "INVALID_DATA_LENGTH",
            CryptoError::InvalidPinBlock(_) => "INVALID_PIN_BLOCK",
            CryptoError::InvalidPan(_) => "INVALID_PAN",
            CryptoError::InvalidPin(_) => "INVALID_PIN",
            CryptoError::WeakKey => "WEAK_KEY",
            CryptoError::BadParity => "BAD_PARITY",
            CryptoError::Unsupported(_) => "UNSUPPORTED",
            CryptoError::RngFailure => "RNG_FAILURE",
        }
    }
}
