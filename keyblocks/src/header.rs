//! Typed TR-31 / X9.143 key block headers: parse strictly, serialize canonically.
//!
//! A header is what binds a key to its usage, so parsing refuses anything ambiguous
//! (bad version, non-numeric or lying lengths, non-printable bytes, malformed optional
//! blocks) instead of guessing. This module never touches key material; it knows
//! nothing of KBPKs or cryptography.

use core::fmt;
use core::str::FromStr;

use crate::error::Error;

/// Largest key block the 4-digit length field can describe.
pub const MAX_BLOCK_LEN: usize = 9999;

/// Length of the fixed part of every header.
pub(crate) const FIXED_HEADER_LEN: usize = 16;

/// Key block version id: which binding method protects the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// `A`: TDES key variant binding (legacy, deprecated).
    A,
    /// `B`: TDES key derivation binding (TR-31:2018 §5.3.2.1).
    B,
    /// `C`: TDES key variant binding, as `A` with clarified header values (legacy).
    C,
    /// `D`: AES key derivation binding (TR-31:2018 §5.3.2.3, X9.143).
    D,
}

impl Version {
    /// The version id character as a byte.
    pub const fn as_byte(self) -> u8 {
        match self {
            Version::A => b'A',
            Version::B => b'B',
            Version::C => b'C',
            Version::D => b'D',
        }
    }

    /// The version for an id byte, if supported.
    pub const fn from_byte(b: u8) -> Option<Version> {
        match b {
            b'A' => Some(Version::A),
            b'B' => Some(Version::B),
            b'C' => Some(Version::C),
            b'D' => Some(Version::D),
            _ => None,
        }
    }

    /// Cipher block size in bytes: 8 (TDES) for A/B/C, 16 (AES) for D.
    /// Headers and payloads are aligned to it.
    pub const fn block_size(self) -> usize {
        match self {
            Version::A | Version::B | Version::C => 8,
            Version::D => 16,
        }
    }

    /// Length of the block's MAC in bytes: 4 for A/C, 8 for B, 16 for D.
    pub const fn mac_len(self) -> usize {
        match self {
            Version::A | Version::C => 4,
            Version::B => 8,
            Version::D => 16,
        }
    }

    /// Whether a KBPK of `len` bytes may protect a block of this version:
    /// 16 or 24 (TDES) for A/B/C, 16, 24 or 32 (AES) for D. Single-DES KBPKs are refused.
    pub const fn is_valid_kbpk_len(self, len: usize) -> bool {
        match self {
            Version::A | Version::B | Version::C => matches!(len, 16 | 24),
            Version::D => matches!(len, 16 | 24 | 32),
        }
    }

    pub(crate) const fn kbpk_lengths_text(self) -> &'static str {
        match self {
            Version::A | Version::B | Version::C => "16 or 24",
            Version::D => "16, 24 or 32",
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", char::from(self.as_byte()))
    }
}

impl FromStr for Version {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.as_bytes() {
            [b] => Version::from_byte(*b).ok_or(Error::UnsupportedVersion {
                found: printable_char(*b),
            }),
            _ => Err(Error::InvalidField {
                field: "version",
                reason: "must be exactly one character",
            }),
        }
    }
}

/// Two-character key usage (`P0`, `K0`, `M3` …). Any printable pair is accepted;
/// numeric values are reserved for proprietary use by the standard.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyUsage(pub [u8; 2]);

impl KeyUsage {
    /// BDK base derivation key.
    pub const B0: KeyUsage = KeyUsage(*b"B0");
    /// Initial DUKPT key.
    pub const B1: KeyUsage = KeyUsage(*b"B1");
    /// Base key variant key.
    pub const B2: KeyUsage = KeyUsage(*b"B2");
    /// Card verification key.
    pub const C0: KeyUsage = KeyUsage(*b"C0");
    /// Symmetric data encryption key.
    pub const D0: KeyUsage = KeyUsage(*b"D0");
    /// Asymmetric data encryption key.
    pub const D1: KeyUsage = KeyUsage(*b"D1");
    /// Data encryption key for decimalization tables.
    pub const D2: KeyUsage = KeyUsage(*b"D2");
    /// EMV issuer master key: application cryptograms.
    pub const E0: KeyUsage = KeyUsage(*b"E0");
    /// EMV issuer master key: secure messaging for confidentiality.
    pub const E1: KeyUsage = KeyUsage(*b"E1");
    /// EMV issuer master key: secure messaging for integrity.
    pub const E2: KeyUsage = KeyUsage(*b"E2");
    /// EMV issuer master key: data authentication code.
    pub const E3: KeyUsage = KeyUsage(*b"E3");
    /// EMV issuer master key: dynamic numbers.
    pub const E4: KeyUsage = KeyUsage(*b"E4");
    /// EMV issuer master key: card personalization.
    pub const E5: KeyUsage = KeyUsage(*b"E5");
    /// EMV issuer master key: other.
    pub const E6: KeyUsage = KeyUsage(*b"E6");
    /// Initialization vector.
    pub const I0: KeyUsage = KeyUsage(*b"I0");
    /// Key encryption / wrapping key (TMK, ZMK, KEK).
    pub const K0: KeyUsage = KeyUsage(*b"K0");
    /// TR-31 key block protection key.
    pub const K1: KeyUsage = KeyUsage(*b"K1");
    /// TR-34 asymmetric key.
    pub const K2: KeyUsage = KeyUsage(*b"K2");
    /// Asymmetric key for key agreement / wrapping.
    pub const K3: KeyUsage = KeyUsage(*b"K3");
    /// ISO 16609 MAC algorithm 1 (TDEA).
    pub const M0: KeyUsage = KeyUsage(*b"M0");
    /// ISO 9797-1 MAC algorithm 1.
    pub const M1: KeyUsage = KeyUsage(*b"M1");
    /// ISO 9797-1 MAC algorithm 2.
    pub const M2: KeyUsage = KeyUsage(*b"M2");
    /// ISO 9797-1 MAC algorithm 3 (retail MAC).
    pub const M3: KeyUsage = KeyUsage(*b"M3");
    /// ISO 9797-1 MAC algorithm 4.
    pub const M4: KeyUsage = KeyUsage(*b"M4");
    /// ISO 9797-1:1999 MAC algorithm 5.
    pub const M5: KeyUsage = KeyUsage(*b"M5");
    /// ISO 9797-1:2011 MAC algorithm 5 / CMAC.
    pub const M6: KeyUsage = KeyUsage(*b"M6");
    /// HMAC.
    pub const M7: KeyUsage = KeyUsage(*b"M7");
    /// ISO 9797-1:2011 MAC algorithm 6.
    pub const M8: KeyUsage = KeyUsage(*b"M8");
    /// PIN encryption key (TPK / PIK / ZPK).
    pub const P0: KeyUsage = KeyUsage(*b"P0");
    /// Asymmetric key pair for digital signature.
    pub const S0: KeyUsage = KeyUsage(*b"S0");
    /// Asymmetric key pair, CA key.
    pub const S1: KeyUsage = KeyUsage(*b"S1");
    /// Asymmetric key pair, non-X9.24 key.
    pub const S2: KeyUsage = KeyUsage(*b"S2");
    /// PIN verification, KPV, other algorithm.
    pub const V0: KeyUsage = KeyUsage(*b"V0");
    /// PIN verification, IBM 3624.
    pub const V1: KeyUsage = KeyUsage(*b"V1");
    /// PIN verification, VISA PVV.
    pub const V2: KeyUsage = KeyUsage(*b"V2");
    /// PIN verification, X9.132 algorithm 1.
    pub const V3: KeyUsage = KeyUsage(*b"V3");
    /// PIN verification, X9.132 algorithm 2.
    pub const V4: KeyUsage = KeyUsage(*b"V4");
}

impl fmt::Debug for KeyUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyUsage(\"{self}\")")
    }
}

impl fmt::Display for KeyUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}",
            printable_char(self.0[0]),
            printable_char(self.0[1])
        )
    }
}

impl FromStr for KeyUsage {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.as_bytes() {
            [a, b] if is_printable(*a) && is_printable(*b) => Ok(KeyUsage([*a, *b])),
            _ => Err(Error::InvalidField {
                field: "key usage",
                reason: "must be exactly two printable ASCII characters",
            }),
        }
    }
}

/// One-character algorithm of the wrapped key. Any printable byte is accepted
/// (numeric values are proprietary; poshsm uses `4` for SM4).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Algorithm(pub u8);

impl Algorithm {
    /// AES.
    pub const AES: Algorithm = Algorithm(b'A');
    /// Single DES (backwards compatibility only).
    pub const DES: Algorithm = Algorithm(b'D');
    /// Elliptic curve.
    pub const EC: Algorithm = Algorithm(b'E');
    /// HMAC (hash named in an optional block).
    pub const HMAC: Algorithm = Algorithm(b'H');
    /// RSA.
    pub const RSA: Algorithm = Algorithm(b'R');
    /// DSA.
    pub const DSA: Algorithm = Algorithm(b'S');
    /// Triple DES.
    pub const TDES: Algorithm = Algorithm(b'T');
}

impl fmt::Debug for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Algorithm('{self}')")
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", printable_char(self.0))
    }
}

impl FromStr for Algorithm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.as_bytes() {
            [a] if is_printable(*a) => Ok(Algorithm(*a)),
            _ => Err(Error::InvalidField {
                field: "algorithm",
                reason: "must be exactly one printable ASCII character",
            }),
        }
    }
}

/// One-character mode of use: which operations the key may perform.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModeOfUse(pub u8);

impl ModeOfUse {
    /// Both encrypt and decrypt / wrap and unwrap.
    pub const B: ModeOfUse = ModeOfUse(b'B');
    /// Both generate and verify.
    pub const C: ModeOfUse = ModeOfUse(b'C');
    /// Decrypt / unwrap only.
    pub const D: ModeOfUse = ModeOfUse(b'D');
    /// Encrypt / wrap only.
    pub const E: ModeOfUse = ModeOfUse(b'E');
    /// Generate only.
    pub const G: ModeOfUse = ModeOfUse(b'G');
    /// No special restrictions beyond those of the key usage.
    pub const N: ModeOfUse = ModeOfUse(b'N');
    /// Signature only.
    pub const S: ModeOfUse = ModeOfUse(b'S');
    /// Both sign and decrypt.
    pub const T: ModeOfUse = ModeOfUse(b'T');
    /// Verify only.
    pub const V: ModeOfUse = ModeOfUse(b'V');
    /// Key used to derive other keys.
    pub const X: ModeOfUse = ModeOfUse(b'X');
    /// Key used to create key variants.
    pub const Y: ModeOfUse = ModeOfUse(b'Y');
}

impl fmt::Debug for ModeOfUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModeOfUse('{self}')")
    }
}

impl fmt::Display for ModeOfUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", printable_char(self.0))
    }
}

impl FromStr for ModeOfUse {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.as_bytes() {
            [a] if is_printable(*a) => Ok(ModeOfUse(*a)),
            _ => Err(Error::InvalidField {
                field: "mode of use",
                reason: "must be exactly one printable ASCII character",
            }),
        }
    }
}

/// Whether the key may leave its cryptographic domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exportability {
    /// `E`: exportable under a trusted key (e.g. in a key block).
    Exportable,
    /// `N`: not exportable.
    NonExportable,
    /// `S`: sensitive; exportable under an untrusted key.
    Sensitive,
}

impl Exportability {
    /// The header character as a byte.
    pub const fn as_byte(self) -> u8 {
        match self {
            Exportability::Exportable => b'E',
            Exportability::NonExportable => b'N',
            Exportability::Sensitive => b'S',
        }
    }

    /// The exportability for a header byte, if valid.
    pub const fn from_byte(b: u8) -> Option<Exportability> {
        match b {
            b'E' => Some(Exportability::Exportable),
            b'N' => Some(Exportability::NonExportable),
            b'S' => Some(Exportability::Sensitive),
            _ => None,
        }
    }
}

impl fmt::Display for Exportability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", char::from(self.as_byte()))
    }
}

impl FromStr for Exportability {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.as_bytes() {
            [b] => Exportability::from_byte(*b).ok_or(Error::BadExportability {
                found: printable_char(*b),
            }),
            _ => Err(Error::InvalidField {
                field: "exportability",
                reason: "must be exactly one character",
            }),
        }
    }
}

/// One optional header block: a 2-character id and printable ASCII data.
/// The length encoding (short, or extended when the block exceeds 255 chars) is
/// handled on serialization.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OptionalBlock {
    /// Block id, two ASCII alphanumerics (`KS`, `KC`, `KP`, `PB`, `TS` …).
    pub id: [u8; 2],
    /// Block data, printable ASCII.
    pub data: String,
}

impl OptionalBlock {
    /// Key set identifier (e.g. DUKPT KSN prefix).
    pub const KS: [u8; 2] = *b"KS";
    /// Check value of the wrapped key.
    pub const KC: [u8; 2] = *b"KC";
    /// Check value of the KBPK.
    pub const KP: [u8; 2] = *b"KP";
    /// Padding block, managed automatically on wrap.
    pub const PB: [u8; 2] = *b"PB";
    /// Time stamp.
    pub const TS: [u8; 2] = *b"TS";
    /// HMAC hash algorithm.
    pub const HM: [u8; 2] = *b"HM";
    /// Initial key identifier (AES DUKPT).
    pub const IK: [u8; 2] = *b"IK";
    /// Key block values version.
    pub const KV: [u8; 2] = *b"KV";

    /// A block, validated: alphanumeric id, printable data, encodable length.
    pub fn new(id: [u8; 2], data: impl Into<String>) -> Result<Self, Error> {
        let block = OptionalBlock {
            id,
            data: data.into(),
        };
        block.validate()?;
        Ok(block)
    }

    /// Whether this is the padding block `PB`.
    pub fn is_padding(&self) -> bool {
        self.id == Self::PB
    }

    fn validate(&self) -> Result<(), Error> {
        if !self.id.iter().all(u8::is_ascii_alphanumeric) {
            return Err(Error::InvalidField {
                field: "optional block id",
                reason: "must be two ASCII letters or digits",
            });
        }
        if !self.data.bytes().all(is_printable) {
            return Err(Error::InvalidField {
                field: "optional block data",
                reason: "must be printable ASCII",
            });
        }
        if self.data.len() + 10 > MAX_BLOCK_LEN {
            return Err(Error::InvalidField {
                field: "optional block data",
                reason: "too long for a key block",
            });
        }
        Ok(())
    }

    /// Appends the block in TR-31 encoding: short length when the whole block fits
    /// 255 chars, else the extended form `00` `02` `LLLL`.
    fn encode_into(&self, out: &mut String) {
        out.push(char::from(self.id[0]));
        out.push(char::from(self.id[1]));
        let short = self.data.len() + 4;
        if short <= 0xFF {
            push_hex_upper(out, &[short as u8]);
        } else {
            // validate() bounds data.len() + 10 by 9999, so the total fits two bytes.
            let ext = (self.data.len() + 10) as u16;
            out.push_str("0002");
            push_hex_upper(out, &ext.to_be_bytes());
        }
        out.push_str(&self.data);
    }

    fn encoded_len(&self) -> usize {
        if self.data.len() + 4 <= 0xFF {
            self.data.len() + 4
        } else {
            self.data.len() + 10
        }
    }
}

/// How a key check value in a `KC` or `KP` block was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KcvAlgorithm {
    /// `00`: legacy KCV, the key encrypting a block of zeros.
    Legacy,
    /// `01`: CMAC of a block of zeros under the key.
    Cmac,
}

/// A key check value carried in a `KC` (wrapped key) or `KP` (KBPK) block.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CheckValue {
    /// How the check value was computed.
    pub algorithm: KcvAlgorithm,
    /// The check value bytes (typically 3 or 5).
    pub value: Vec<u8>,
}

impl CheckValue {
    fn parse(data: &str) -> Result<CheckValue, Error> {
        let bad = Error::InvalidField {
            field: "check value block",
            reason: "must be 00 or 01 followed by upper-case hex",
        };
        let (alg, hex) = data.split_at_checked(2).ok_or(bad.clone())?;
        let algorithm = match alg {
            "00" => KcvAlgorithm::Legacy,
            "01" => KcvAlgorithm::Cmac,
            _ => return Err(bad),
        };
        if hex.is_empty() || hex.len() % 2 != 0 {
            return Err(bad);
        }
        let mut value = vec![0u8; hex.len() / 2];
        decode_hex_upper(hex.as_bytes(), &mut value).map_err(|_| bad)?;
        Ok(CheckValue { algorithm, value })
    }

    fn encode(&self) -> String {
        let mut s = String::with_capacity(2 + 2 * self.value.len());
        s.push_str(match self.algorithm {
            KcvAlgorithm::Legacy => "00",
            KcvAlgorithm::Cmac => "01",
        });
        push_hex_upper(&mut s, &self.value);
        s
    }
}

/// A TR-31 / X9.143 key block header.
///
/// The length field and the optional block count are not stored: they are computed
/// on serialization, where a padding block `PB` is also added when needed to align
/// the header to the cipher block size of the version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Header {
    /// Version id (binding method).
    pub version: Version,
    /// Key usage.
    pub key_usage: KeyUsage,
    /// Algorithm of the wrapped key.
    pub algorithm: Algorithm,
    /// Mode of use.
    pub mode_of_use: ModeOfUse,
    /// Key version number, two printable characters (`00` when unused; `c1`… for components).
    pub key_version: [u8; 2],
    /// Exportability.
    pub exportability: Exportability,
    /// Key context byte (X9.143; `0` in TR-31:2018 where it was reserved).
    /// Header byte 15, the last reserved byte, is always `0`.
    pub key_context: u8,
    /// Optional blocks in header order.
    pub optional_blocks: Vec<OptionalBlock>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ParseMode {
    /// A complete key block (or a header whose length field equals its own length).
    Block,
    /// A header template for wrapping: the length field value is ignored and the
    /// header need not be aligned yet.
    Template,
}

impl Header {
    /// A header with key version `00`, key context `0` and no optional blocks.
    pub fn new(
        version: Version,
        key_usage: KeyUsage,
        algorithm: Algorithm,
        mode_of_use: ModeOfUse,
        exportability: Exportability,
    ) -> Header {
        Header {
            version,
            key_usage,
            algorithm,
            mode_of_use,
            key_version: *b"00",
            exportability,
            key_context: b'0',
            optional_blocks: Vec::new(),
        }
    }

    /// Parses the header of a complete key block, strictly.
    ///
    /// The length field must equal `block.len()`; every byte must be printable ASCII;
    /// optional blocks must be well formed and the header aligned to the version's
    /// block size. The key data and MAC after the header are not examined here
    /// (that is [`crate::unwrap`]'s job). A bare header whose length field equals its
    /// own length (`"B0016P0TE00N0000"`) also parses.
    pub fn parse(block: &str) -> Result<Header, Error> {
        parse_header(block, ParseMode::Block).map(|(h, _)| h)
    }

    /// Parses a header template given to a wrap operation (psec style, e.g.
    /// `"B0000P0TE00N0000"`): the input must be exactly one header; the length field
    /// must be 4 digits but its value is ignored, and alignment is left to wrap.
    pub fn parse_template(header: &str) -> Result<Header, Error> {
        parse_header(header, ParseMode::Template).map(|(h, _)| h)
    }

    /// Data of the first optional block with this id.
    pub fn optional(&self, id: &[u8; 2]) -> Option<&str> {
        self.optional_blocks
            .iter()
            .find(|b| &b.id == id)
            .map(|b| b.data.as_str())
    }

    /// Sets an optional block: replaces the data of the first block with this id, or
    /// appends a new block. Refuses a non-alphanumeric id or non-printable data.
    pub fn set_optional(&mut self, id: [u8; 2], data: impl Into<String>) -> Result<(), Error> {
        let block = OptionalBlock::new(id, data)?;
        match self.optional_blocks.iter_mut().find(|b| b.id == id) {
            Some(existing) => existing.data = block.data,
            None => self.optional_blocks.push(block),
        }
        Ok(())
    }

    /// Removes every optional block with this id; returns the first one removed.
    pub fn remove_optional(&mut self, id: &[u8; 2]) -> Option<OptionalBlock> {
        let first = self
            .optional_blocks
            .iter()
            .position(|b| &b.id == id)
            .map(|i| self.optional_blocks.remove(i));
        self.optional_blocks.retain(|b| &b.id != id);
        first
    }

    /// The key set identifier (`KS` block), e.g. a DUKPT KSN prefix.
    pub fn key_set_id(&self) -> Option<&str> {
        self.optional(&OptionalBlock::KS)
    }

    /// Sets the key set identifier (`KS` block).
    pub fn set_key_set_id(&mut self, ksi: &str) -> Result<(), Error> {
        self.set_optional(OptionalBlock::KS, ksi)
    }

    /// The wrapped key's check value (`KC` block), if present.
    pub fn key_check_value(&self) -> Result<Option<CheckValue>, Error> {
        self.optional(&OptionalBlock::KC)
            .map(CheckValue::parse)
            .transpose()
    }

    /// Sets the wrapped key's check value (`KC` block).
    pub fn set_key_check_value(&mut self, kcv: &CheckValue) -> Result<(), Error> {
        self.set_optional(OptionalBlock::KC, kcv.encode())
    }

    /// The KBPK's check value (`KP` block), if present.
    pub fn kbpk_check_value(&self) -> Result<Option<CheckValue>, Error> {
        self.optional(&OptionalBlock::KP)
            .map(CheckValue::parse)
            .transpose()
    }

    /// Sets the KBPK's check value (`KP` block).
    pub fn set_kbpk_check_value(&mut self, kcv: &CheckValue) -> Result<(), Error> {
        self.set_optional(OptionalBlock::KP, kcv.encode())
    }

    /// The header alone as it would open a key block, with its own length in the
    /// length field and a `PB` block added if needed for alignment. For a header
    /// parsed from a block, this reproduces the block's header except for the
    /// length field.
    pub fn to_header_string(&self) -> Result<String, Error> {
        let (blocks, count) = self.encode_optional_blocks()?;
        let len = FIXED_HEADER_LEN + blocks.len();
        if len > MAX_BLOCK_LEN {
            return Err(Error::BlockTooLong { len });
        }
        let mut out = String::with_capacity(len);
        self.encode_fixed(&mut out, len, count)?;
        out.push_str(&blocks);
        Ok(out)
    }

    /// Serialized optional blocks (with `PB` alignment) and their count.
    pub(crate) fn encode_optional_blocks(&self) -> Result<(String, usize), Error> {
        for b in &self.optional_blocks {
            b.validate()?;
        }
        let bs = self.version.block_size();
        let total: usize = self
            .optional_blocks
            .iter()
            .map(OptionalBlock::encoded_len)
            .sum();
        let pb_misplaced = self
            .optional_blocks
            .iter()
            .rev()
            .skip(1)
            .any(OptionalBlock::is_padding);
        let keep_as_is = total % bs == 0 && !pb_misplaced;
        let kept: Vec<&OptionalBlock> = self
            .optional_blocks
            .iter()
            .filter(|b| keep_as_is || !b.is_padding())
            .collect();
        let mut out = String::with_capacity(total + 4 + bs);
        for b in &kept {
            b.encode_into(&mut out);
        }
        let mut count = kept.len();
        if out.len() % bs != 0 {
            let fill = (bs - (out.len() + 4) % bs) % bs;
            let pad = OptionalBlock {
                id: OptionalBlock::PB,
                data: "0".repeat(fill),
            };
            pad.encode_into(&mut out);
            count += 1;
        }
        if count > 99 {
            return Err(Error::TooManyOptionalBlocks { count });
        }
        Ok((out, count))
    }

    /// Appends the 16 fixed header characters with the given length and block count.
    pub(crate) fn encode_fixed(
        &self,
        out: &mut String,
        total_len: usize,
        count: usize,
    ) -> Result<(), Error> {
        check_printable_field(&self.key_usage.0, "key usage")?;
        check_printable_field(&[self.algorithm.0], "algorithm")?;
        check_printable_field(&[self.mode_of_use.0], "mode of use")?;
        check_printable_field(&self.key_version, "key version number")?;
        check_printable_field(&[self.key_context], "key context")?;
        if total_len > MAX_BLOCK_LEN {
            return Err(Error::BlockTooLong { len: total_len });
        }
        out.push(char::from(self.version.as_byte()));
        push_decimal(out, total_len, 4);
        out.push(char::from(self.key_usage.0[0]));
        out.push(char::from(self.key_usage.0[1]));
        out.push(char::from(self.algorithm.0));
        out.push(char::from(self.mode_of_use.0));
        out.push(char::from(self.key_version[0]));
        out.push(char::from(self.key_version[1]));
        out.push(char::from(self.exportability.as_byte()));
        push_decimal(out, count, 2);
        out.push(char::from(self.key_context));
        out.push('0');
        Ok(())
    }
}

impl FromStr for Header {
    type Err = Error;
    /// Same as [`Header::parse`].
    fn from_str(s: &str) -> Result<Self, Error> {
        Header::parse(s)
    }
}

/// Parses the header at the start of `s`; returns it with the header's length.
pub(crate) fn parse_header_of_block(block: &str) -> Result<(Header, usize), Error> {
    parse_header(block, ParseMode::Block)
}

fn parse_header(s: &str, mode: ParseMode) -> Result<(Header, usize), Error> {
    let b = s.as_bytes();
    if let Some(offset) = b.iter().position(|&c| !is_printable(c)) {
        return Err(Error::NotPrintable { offset });
    }
    if b.len() < 5 {
        return Err(Error::TooShort { len: b.len() });
    }
    let version = Version::from_byte(b[0]).ok_or(Error::UnsupportedVersion {
        found: char::from(b[0]),
    })?;
    let declared = parse_decimal(&b[1..5]).ok_or(Error::BadLengthField)?;
    let end = match mode {
        ParseMode::Block => {
            if declared > b.len() {
                return Err(Error::Truncated {
                    declared,
                    actual: b.len(),
                });
            }
            if declared < b.len() {
                return Err(Error::TrailingData {
                    declared,
                    actual: b.len(),
                });
            }
            declared
        }
        ParseMode::Template => b.len(),
    };
    if b.len() < FIXED_HEADER_LEN {
        return Err(Error::TooShort { len: b.len() });
    }
    let exportability = Exportability::from_byte(b[11]).ok_or(Error::BadExportability {
        found: char::from(b[11]),
    })?;
    let count = parse_decimal(&b[12..14]).ok_or(Error::BadBlockCount)?;
    if b[15] != b'0' {
        return Err(Error::BadReservedByte {
            found: char::from(b[15]),
        });
    }
    let mut pos = FIXED_HEADER_LEN;
    let mut optional_blocks = Vec::with_capacity(count);
    for index in 1..=count {
        let (block, next) = parse_optional_block(b, pos, end, index)?;
        if block.is_padding() && index != count {
            return Err(Error::BadOptionalBlock {
                index,
                id: Some(block.id),
                reason: "padding block PB must be the last optional block",
            });
        }
        optional_blocks.push(block);
        pos = next;
    }
    match mode {
        ParseMode::Block => {
            let bs = version.block_size();
            if pos % bs != 0 {
                return Err(Error::HeaderMisaligned {
                    len: pos,
                    block_size: bs,
                });
            }
        }
        ParseMode::Template => {
            if pos != b.len() {
                return Err(Error::InvalidField {
                    field: "template",
                    reason: "characters follow the last optional block (check the block count)",
                });
            }
        }
    }
    let header = Header {
        version,
        key_usage: KeyUsage([b[5], b[6]]),
        algorithm: Algorithm(b[7]),
        mode_of_use: ModeOfUse(b[8]),
        key_version: [b[9], b[10]],
        exportability,
        key_context: b[14],
        optional_blocks,
    };
    Ok((header, pos))
}

/// Parses one optional block starting at `pos`, not reading at or past `end`.
fn parse_optional_block(
    b: &[u8],
    pos: usize,
    end: usize,
    index: usize,
) -> Result<(OptionalBlock, usize), Error> {
    let fail =
        |id: Option<[u8; 2]>, reason: &'static str| Error::BadOptionalBlock { index, id, reason };
    let field = |from: usize, len: usize| b.get(from..from + len).filter(|_| from + len <= end);

    let id_bytes = field(pos, 2).ok_or(fail(None, "header ends before the block id"))?;
    let id = [id_bytes[0], id_bytes[1]];
    if !id.iter().all(u8::is_ascii_alphanumeric) {
        return Err(fail(None, "block id is not two ASCII letters or digits"));
    }
    let len_field =
        field(pos + 2, 2).ok_or(fail(Some(id), "header ends before the block length"))?;
    let short = parse_hex_upper(len_field).ok_or(fail(
        Some(id),
        "block length is not 2 upper-case hex digits",
    ))?;
    let (total, data_start) = if short != 0 {
        if short < 4 {
            return Err(fail(
                Some(id),
                "block length is shorter than its id and length",
            ));
        }
        (short, pos + 4)
    } else {
        let lol_field =
            field(pos + 4, 2).ok_or(fail(Some(id), "header ends before the extended length"))?;
        let lol = parse_hex_upper(lol_field).ok_or(fail(
            Some(id),
            "extended length-of-length is not 2 upper-case hex digits",
        ))?;
        if lol == 0 || lol > 2 {
            return Err(fail(
                Some(id),
                "extended length must use 1 or 2 length bytes",
            ));
        }
        let digits = 2 * lol;
        let ext_field = field(pos + 6, digits)
            .ok_or(fail(Some(id), "header ends inside the extended length"))?;
        let ext = parse_hex_upper(ext_field)
            .ok_or(fail(Some(id), "extended length is not upper-case hex"))?;
        if ext < 6 + digits {
            return Err(fail(
                Some(id),
                "extended block length is shorter than its own fields",
            ));
        }
        (ext, pos + 6 + digits)
    };
    let next = pos + total;
    if next > end {
        return Err(fail(
            Some(id),
            "block length runs past the end of the header",
        ));
    }
    let data = &b[data_start..next];
    // Every byte of the input was checked printable ASCII, so this is valid UTF-8.
    let data = core::str::from_utf8(data).map_err(|_| fail(Some(id), "block data is not ASCII"))?;
    Ok((
        OptionalBlock {
            id,
            data: data.to_owned(),
        },
        next,
    ))
}

pub(crate) fn is_printable(c: u8) -> bool {
    (0x20..=0x7E).contains(&c)
}

/// A byte as a char for error messages; non-printables become `?` so that no
/// arbitrary byte ends up in a message.
fn printable_char(c: u8) -> char {
    if is_printable(c) {
        char::from(c)
    } else {
        '?'
    }
}

fn check_printable_field(bytes: &[u8], field: &'static str) -> Result<(), Error> {
    if bytes.iter().all(|&c| is_printable(c)) {
        Ok(())
    } else {
        Err(Error::InvalidField {
            field,
            reason: "must be printable ASCII",
        })
    }
}

fn parse_decimal(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0usize, |acc, d| acc * 10 + usize::from(d - b'0')),
    )
}

fn parse_hex_upper(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    digits.iter().try_fold(0usize, |acc, &d| {
        hex_value_upper(d).map(|v| (acc << 4) | usize::from(v))
    })
}

fn push_decimal(out: &mut String, value: usize, width: usize) {
    use core::fmt::Write;
    // Writing to a String cannot fail.
    let _ = write!(out, "{value:0width$}");
}

pub(crate) fn hex_value_upper(d: u8) -> Option<u8> {
    match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'A'..=b'F' => Some(d - b'A' + 10),
        _ => None,
    }
}

/// Decodes upper-case hex into `out` (which must be half the input's length).
pub(crate) fn decode_hex_upper(hex: &[u8], out: &mut [u8]) -> Result<(), ()> {
    if hex.len() != 2 * out.len() {
        return Err(());
    }
    for (pair, o) in hex.chunks_exact(2).zip(out.iter_mut()) {
        let hi = hex_value_upper(pair[0]).ok_or(())?;
        let lo = hex_value_upper(pair[1]).ok_or(())?;
        *o = (hi << 4) | lo;
    }
    Ok(())
}

pub(crate) fn push_hex_upper(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for &byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0F)]));
    }
}
