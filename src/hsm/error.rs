//! The core's one error type: a stable reason code (the `ErrorInfo.reason` of
//! the gRPC status), a category (mapped to a gRPC code in `server` only) and a
//! message that names the problem. Messages never carry key bytes or PINs.

use crate::crypto::CryptoError;
use crate::keys::{KeyError, LmkError};
use crate::store::StoreError;

/// Broad class of failure; `server::status` maps each to one gRPC code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Category {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    PermissionDenied,
    ResourceExhausted,
    Aborted,
    Unavailable,
    Internal,
}

/// Stable reason codes. The string form is the contract (API.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    InvalidArgument,
    InvalidPinBlock,
    InvalidPan,
    InvalidPin,
    InvalidKeyBlock,
    InvalidKeyLength,
    InvalidMacLength,
    InvalidTerminalId,
    InvalidAlias,
    MessageTooLarge,
    UnsupportedAlgorithm,
    BadParity,
    WeakKey,
    DuplicateComponent,
    TooFewComponents,
    KcvMismatch,
    WrongLmk,
    KeyUsageMismatch,
    NotExportable,
    KeyRetired,
    WrappingKeyTooWeak,
    TerminalHasNoTmk,
    TerminalNotSignedIn,
    NoPendingTmk,
    LmkRetired,
    PreviousLmkActive,
    NoPreviousLmk,
    FormatTranslationRefused,
    SingleDesDisabled,
    UnknownKey,
    UnknownTerminal,
    AliasExists,
    TerminalExists,
    PermissionDenied,
    TerminalThrottled,
    Conflict,
    ModuleAlarm,
    StoreError,
    Internal,
}

impl Reason {
    pub fn code(self) -> &'static str {
        use Reason::*;
        match self {
            InvalidArgument => "INVALID_ARGUMENT",
            InvalidPinBlock => "INVALID_PIN_BLOCK",
            InvalidPan => "INVALID_PAN",
            InvalidPin => "INVALID_PIN",
            InvalidKeyBlock => "INVALID_KEY_BLOCK",
            InvalidKeyLength => "INVALID_KEY_LENGTH",
            InvalidMacLength => "INVALID_MAC_LENGTH",
            InvalidTerminalId => "INVALID_TERMINAL_ID",
            InvalidAlias => "INVALID_ALIAS",
            MessageTooLarge => "MESSAGE_TOO_LARGE",
            UnsupportedAlgorithm => "UNSUPPORTED_ALGORITHM",
            BadParity => "BAD_PARITY",
            WeakKey => "WEAK_KEY",
            DuplicateComponent => "DUPLICATE_COMPONENT",
            TooFewComponents => "TOO_FEW_COMPONENTS",
            KcvMismatch => "KCV_MISMATCH",
            WrongLmk => "WRONG_LMK",
            KeyUsageMismatch => "KEY_USAGE_MISMATCH",
            NotExportable => "NOT_EXPORTABLE",
            KeyRetired => "KEY_RETIRED",
            WrappingKeyTooWeak => "WRAPPING_KEY_TOO_WEAK",
            TerminalHasNoTmk => "TERMINAL_HAS_NO_TMK",
            TerminalNotSignedIn => "TERMINAL_NOT_SIGNED_IN",
            NoPendingTmk => "NO_PENDING_TMK",
            LmkRetired => "LMK_RETIRED",
            PreviousLmkActive => "PREVIOUS_LMK_ACTIVE",
            NoPreviousLmk => "NO_PREVIOUS_LMK",
            FormatTranslationRefused => "FORMAT_TRANSLATION_REFUSED",
            SingleDesDisabled => "SINGLE_DES_DISABLED",
            UnknownKey => "UNKNOWN_KEY",
            UnknownTerminal => "UNKNOWN_TERMINAL",
            AliasExists => "ALIAS_EXISTS",
            TerminalExists => "TERMINAL_EXISTS",
            PermissionDenied => "PERMISSION_DENIED",
            TerminalThrottled => "TERMINAL_THROTTLED",
            Conflict => "CONFLICT",
            ModuleAlarm => "MODULE_ALARM",
            StoreError => "STORE_ERROR",
            Internal => "INTERNAL",
        }
    }

    pub fn category(self) -> Category {
        use Reason::*;
        match self {
            InvalidArgument | InvalidPinBlock | InvalidPan | InvalidPin | InvalidKeyBlock
            | InvalidKeyLength | InvalidMacLength | InvalidTerminalId | InvalidAlias
            | MessageTooLarge | UnsupportedAlgorithm | BadParity | WeakKey | DuplicateComponent
            | TooFewComponents | KcvMismatch | WrongLmk => Category::InvalidArgument,
            KeyUsageMismatch
            | NotExportable
            | KeyRetired
            | WrappingKeyTooWeak
            | TerminalHasNoTmk
            | NoPendingTmk
            | LmkRetired
            | PreviousLmkActive
            | NoPreviousLmk
            | TerminalNotSignedIn
            | FormatTranslationRefused
            | SingleDesDisabled => Category::FailedPrecondition,
            UnknownKey | UnknownTerminal => Category::NotFound,
            AliasExists | TerminalExists => Category::AlreadyExists,
            PermissionDenied => Category::PermissionDenied,
            TerminalThrottled => Category::ResourceExhausted,
            Conflict => Category::Aborted,
            ModuleAlarm => Category::Unavailable,
            StoreError | Internal => Category::Internal,
        }
    }
}

/// An error of the core: reason + message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HsmError {
    pub reason: Reason,
    pub message: String,
}

impl HsmError {
    pub fn new(reason: Reason, message: impl Into<String>) -> HsmError {
        HsmError {
            reason,
            message: message.into(),
        }
    }
    pub fn code(&self) -> &'static str {
        self.reason.code()
    }
    pub fn category(&self) -> Category {
        self.reason.category()
    }
}

/// Shorthand used throughout the core.
pub fn err(reason: Reason, message: impl Into<String>) -> HsmError {
    HsmError::new(reason, message)
}

fn crypto_reason(e: &CryptoError) -> Reason {
    match e.reason() {
        "INVALID_PIN_BLOCK" => Reason::InvalidPinBlock,
        "INVALID_PAN" => Reason::InvalidPan,
        "INVALID_PIN" => Reason::InvalidPin,
        "INVALID_KEY_LENGTH" => Reason::InvalidKeyLength,
        "WEAK_KEY" => Reason::WeakKey,
        "BAD_PARITY" => Reason::BadParity,
        "UNSUPPORTED" => Reason::UnsupportedAlgorithm,
        _ => Reason::InvalidArgument,
    }
}

impl From<CryptoError> for HsmError {
    fn from(e: CryptoError) -> Self {
        HsmError::new(crypto_reason(&e), e.to_string())
    }
}

impl From<KeyError> for HsmError {
    fn from(e: KeyError) -> Self {
        let reason = match &e {
            KeyError::WrongLmk { .. } => Reason::WrongLmk,
            KeyError::LmkRetired { .. } => Reason::LmkRetired,
            KeyError::Crypto(c) => crypto_reason(c),
            _ => Reason::InvalidKeyBlock,
        };
        HsmError::new(reason, e.to_string())
    }
}

impl From<StoreError> for HsmError {
    fn from(e: StoreError) -> Self {
        let reason = match &e {
            StoreError::AliasExists(_) => Reason::AliasExists,
            StoreError::TerminalExists(_) => Reason::TerminalExists,
            StoreError::Conflict(_) | StoreError::AliasMoved(_) => Reason::Conflict,
            _ => Reason::StoreError,
        };
        HsmError::new(reason, e.to_string())
    }
}

impl From<LmkError> for HsmError {
    fn from(e: LmkError) -> Self {
        HsmError::new(Reason::Internal, e.to_string())
    }
}
