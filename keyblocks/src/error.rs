//! The one error type of this crate: every way a key block can be refused.
//!
//! Each variant names the problem in words an operator can act on and carries only
//! lengths, offsets, header characters and block ids — never key bytes, never a
//! KBPK, never decrypted data. [`Error::code`] gives a stable reason code for logs
//! and for mapping to an upper layer's own error type.

use core::fmt;

use crate::header::Version;

/// Why a key block (or a header, or a wrap request) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The input holds a byte outside printable ASCII (0x20..=0x7E) at `offset`.
    NotPrintable {
        /// Zero-based byte offset of the first offending byte.
        offset: usize,
    },
    /// The input is shorter than the 16-character fixed header.
    TooShort {
        /// Length of the input in characters.
        len: usize,
    },
    /// The version id (first character) is not one of `A`, `B`, `C`, `D`.
    UnsupportedVersion {
        /// The character found.
        found: char,
    },
    /// The 4-character key block length field is not four decimal digits.
    BadLengthField,
    /// The block is shorter than its length field says.
    Truncated {
        /// Length the header declares.
        declared: usize,
        /// Length actually received.
        actual: usize,
    },
    /// The block is longer than its length field says.
    TrailingData {
        /// Length the header declares.
        declared: usize,
        /// Length actually received.
        actual: usize,
    },
    /// The exportability byte is not `E`, `N` or `S`.
    BadExportability {
        /// The character found.
        found: char,
    },
    /// The 2-character optional block count is not two decimal digits.
    BadBlockCount,
    /// The reserved header byte (offset 15) is not `0`.
    BadReservedByte {
        /// The character found.
        found: char,
    },
    /// An optional block is malformed.
    BadOptionalBlock {
        /// One-based position of the block in the header.
        index: usize,
        /// The block id, when it could be read.
        id: Option<[u8; 2]>,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The header length is not a multiple of the cipher block size of its version.
    HeaderMisaligned {
        /// Header length in characters.
        len: usize,
        /// Required multiple (8 for A/B/C, 16 for D).
        block_size: usize,
    },
    /// A part of the block that must be upper-case hex is not.
    BadHex {
        /// Which part: "encrypted key data" or "MAC".
        part: &'static str,
    },
    /// The encrypted key data has an impossible length for the version.
    BadPayloadLength {
        /// Length of the encrypted key data in hex characters.
        len: usize,
        /// The key block version.
        version: Version,
    },
    /// The KBPK has a length the version does not allow.
    InvalidKbpkLength {
        /// The key block version.
        version: Version,
        /// The KBPK length in bytes.
        len: usize,
    },
    /// The MAC does not verify: wrong KBPK or a tampered block.
    MacMismatch,
    /// The MAC verified but the decrypted key length field is impossible
    /// (zero, not a whole number of bytes, or longer than the payload).
    BadKeyLengthField,
    /// The key to wrap is empty or too long to fit in a key block.
    InvalidKeyLength {
        /// The key length in bytes.
        len: usize,
    },
    /// `masked_key_len` is shorter than the key itself.
    MaskedLengthTooShort {
        /// The requested masked length in bytes.
        masked: usize,
        /// The key length in bytes.
        key: usize,
    },
    /// Deterministic padding does not bring the payload to a block boundary.
    BadPaddingLength {
        /// Padding length given, in bytes.
        len: usize,
        /// Required multiple for `2 + key + padding`.
        block_size: usize,
    },
    /// The key block would exceed the 9999-character limit of the length field.
    BlockTooLong {
        /// The length the block would have.
        len: usize,
    },
    /// More than 99 optional blocks (including the padding block).
    TooManyOptionalBlocks {
        /// The number of blocks.
        count: usize,
    },
    /// A header field holds a value that cannot be serialized.
    InvalidField {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The operating system's random number generator failed.
    RandomUnavailable,
}

impl Error {
    /// A stable, upper-case reason code for logs and error mapping.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NotPrintable { .. } => "KB_NOT_PRINTABLE",
            Error::TooShort { .. } => "KB_TOO_SHORT",
            Error::UnsupportedVersion { .. } => "KB_UNSUPPORTED_VERSION",
            Error::BadLengthField => "KB_BAD_LENGTH_FIELD",
            Error::Truncated { .. } => "KB_TRUNCATED",
            Error::TrailingData { .. } => "KB_TRAILING_DATA",
            Error::BadExportability { .. } => "KB_BAD_EXPORTABILITY",
            Error::BadBlockCount => "KB_BAD_BLOCK_COUNT",
            Error::BadReservedByte { .. } => "KB_BAD_RESERVED_BYTE",
            Error::BadOptionalBlock { .. } => "KB_BAD_OPTIONAL_BLOCK",
            Error::HeaderMisaligned { .. } => "KB_HEADER_MISALIGNED",
            Error::BadHex { .. } => "KB_BAD_HEX",
            Error::BadPayloadLength { .. } => "KB_BAD_PAYLOAD_LENGTH",
            Error::InvalidKbpkLength { .. } => "KB_INVALID_KBPK_LENGTH",
            Error::MacMismatch => "KB_MAC_MISMATCH",
            Error::BadKeyLengthField => "KB_BAD_KEY_LENGTH_FIELD",
            Error::InvalidKeyLength { .. } => "KB_INVALID_KEY_LENGTH",
            Error::MaskedLengthTooShort { .. } => "KB_MASKED_LENGTH_TOO_SHORT",
            Error::BadPaddingLength { .. } => "KB_BAD_PADDING_LENGTH",
            Error::BlockTooLong { .. } => "KB_BLOCK_TOO_LONG",
            Error::TooManyOptionalBlocks { .. } => "KB_TOO_MANY_OPTIONAL_BLOCKS",
            Error::InvalidField { .. } => "KB_INVALID_FIELD",
            Error::RandomUnavailable => "KB_RANDOM_UNAVAILABLE",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotPrintable { offset } => write!(
                f,
                "key block contains a non-printable or non-ASCII byte at offset {offset}"
            ),
            Error::TooShort { len } => write!(
                f,
                "key block too short: {len} chars, a header alone is 16"
            ),
            Error::UnsupportedVersion { found } => write!(
                f,
                "unsupported key block version '{found}' (expected A, B, C or D)"
            ),
            Error::BadLengthField => {
                write!(f, "key block length field is not 4 decimal digits")
            }
            Error::Truncated { declared, actual } => write!(
                f,
                "truncated key block: header says {declared} chars, got {actual}"
            ),
            Error::TrailingData { declared, actual } => write!(
                f,
                "key block longer than its header says: header says {declared} chars, got {actual}"
            ),
            Error::BadExportability { found } => write!(
                f,
                "exportability '{found}' is not E, N or S"
            ),
            Error::BadBlockCount => {
                write!(f, "optional block count is not 2 decimal digits")
            }
            Error::BadReservedByte { found } => {
                write!(f, "reserved header byte is '{found}', must be '0'")
            }
            Error::BadOptionalBlock { index, id, reason } => match id {
                Some(id) => write!(
                    f,
                    "optional block #{index} ('{}{}'): {reason}",
                    char::from(id[0]),
                    char::from(id[1])
                ),
                None => write!(f, "optional block #{index}: {reason}"),
            },
            Error::HeaderMisaligned { len, block_size } => write!(
                f,
                "key block header is {len} chars, not a multiple of {block_size}"
            ),
            Error::BadHex { part } => write!(f, "key block {part} is not upper-case hex"),
            Error::BadPayloadLength { len, version } => write!(
                f,
                "encrypted key data is {len} hex chars, must be a non-zero multiple of {} for version {version}",
                2 * version.block_size()
            ),
            Error::InvalidKbpkLength { version, len } => write!(
                f,
                "KBPK length {len} is not valid for version {version} (allowed: {})",
                version.kbpk_lengths_text()
            ),
            Error::MacMismatch => write!(
                f,
                "key block MAC does not verify (wrong KBPK or tampered block)"
            ),
            Error::BadKeyLengthField => write!(
                f,
                "decrypted key length field is invalid (MAC verified: the sender built a bad block)"
            ),
            Error::InvalidKeyLength { len } => write!(
                f,
                "key length {len} cannot be wrapped (must be 1 byte or more and fit a 9999-char block)"
            ),
            Error::MaskedLengthTooShort { masked, key } => write!(
                f,
                "masked key length {masked} is shorter than the key ({key} bytes)"
            ),
            Error::BadPaddingLength { len, block_size } => write!(
                f,
                "padding of {len} bytes does not bring length+key+padding to a multiple of {block_size}"
            ),
            Error::BlockTooLong { len } => write!(
                f,
                "key block would be {len} chars, over the 9999 limit"
            ),
            Error::TooManyOptionalBlocks { count } => write!(
                f,
                "{count} optional blocks, at most 99 fit the header"
            ),
            Error::InvalidField { field, reason } => write!(f, "header {field}: {reason}"),
            Error::RandomUnavailable => {
                write!(f, "operating system random number generator failed")
            }
        }
    }
}

impl std::error::Error for Error {}
