//! PINs, PANs and ISO 9564-1 PIN blocks: formats 0, 1 and 3 (8-byte, DES/TDES, or
//! zero-padded to 16 bytes under SM4/AES as UnionPay does) and format 4 (AES/SM4).
//!
//! Decoding is strict: anything but a well-formed block is `INVALID_PIN_BLOCK`. A clear
//! PIN exists only inside [`Pin`] (zeroized on drop, redacted `Debug`, no `Display`), and
//! no error or debug string ever shows a PIN digit or a clear PIN block.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::cipher::{xor_in_place, Cipher};
use super::secret::random_bytes;
use super::CryptoError;

/// A primary account number: 12–19 ASCII decimal digits. Only [`Pan::parse`] makes one.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pan {
    digits: [u8; 19],
    len: u8,
}

impl Pan {
    /// Parses 12–19 ASCII decimal digits, nothing else (no spaces, no separators).
    pub fn parse(s: &str) -> Result<Pan, CryptoError> {
        let bytes = s.as_bytes();
        if !(12..=19).contains(&bytes.len()) {
            return Err(CryptoError::InvalidPan("must be 12 to 19 digits"));
        }
        if !bytes.iter().all(u8::is_ascii_digit) {
            return Err(CryptoError::InvalidPan("must contain only decimal digits"));
        }
        let mut digits = [0u8; 19];
        for (d, b) in digits.iter_mut().zip(bytes) {
            *d = *b;
        }
        Ok(Pan {
            digits,
            // invariant: length checked to be 12..=19 above, so it fits in a u8.
            len: bytes.len() as u8,
        })
    }

    /// The PAN digits as ASCII bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.digits.get(..usize::from(self.len)).unwrap_or_default()
    }

    /// The PAN as a string of digits.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// Number of digits (12–19).
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Always false: a PAN has at least 12 digits.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The PAN with all but the first 6 and last 4 digits replaced by `*`.
    pub fn masked(&self) -> String {
        let n = self.len();
        self.as_bytes()
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                if i < 6 || i + 4 >= n {
                    char::from(d)
                } else {
                    '*'
                }
            })
            .collect()
    }

    /// The 12 rightmost digits excluding the check digit, left-padded with zeros, as
    /// nibble values (ISO 9564-1 formats 0 and 3).
    fn account_number_12(&self) -> [u8; 12] {
        let without_check = self
            .as_bytes()
            .split_last()
            .map(|(_, rest)| rest)
            .unwrap_or_default();
        let mut out = [0u8; 12];
        for (o, d) in out.iter_mut().rev().zip(without_check.iter().rev()) {
            *o = d - b'0';
        }
        out
    }
}

impl fmt::Debug for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pan({})", self.masked())
    }
}

/// A clear PIN of 4–12 decimal digits. Made only by [`Pin::parse`] or by decoding a PIN
/// block; zeroized on drop; `Debug` prints `Pin(<redacted>)`; no `Display`, no `Clone`.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Pin {
    /// ASCII digits; only the first `len` are meaningful, the rest are zero.
    digits: [u8; 12],
    len: u8,
}

impl Pin {
    /// Parses 4–12 ASCII decimal digits.
    pub fn parse(s: &str) -> Result<Pin, CryptoError> {
        let bytes = s.as_bytes();
        if !(4..=12).contains(&bytes.len()) {
            return Err(CryptoError::InvalidPin("must be 4 to 12 digits"));
        }
        if !bytes.iter().all(u8::is_ascii_digit) {
            return Err(CryptoError::InvalidPin("must contain only decimal digits"));
        }
        let mut digits = [0u8; 12];
        for (d, b) in digits.iter_mut().zip(bytes) {
            *d = *b;
        }
        Ok(Pin {
            digits,
            // invariant: length checked to be 4..=12 above, so it fits in a u8.
            len: bytes.len() as u8,
        })
    }

    /// From nibble values 0–9 already checked by the caller (4–12 of them).
    fn from_checked_nibbles(nibbles: &[u8]) -> Pin {
        let mut digits = [0u8; 12];
        let mut len = 0u8;
        for (d, n) in digits.iter_mut().zip(nibbles) {
            *d = b'0' + n;
            len += 1;
        }
        Pin { digits, len }
    }

    /// Number of digits (4–12).
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Always false: a PIN has at least 4 digits.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The PIN digits as ASCII bytes. Do not copy them into non-zeroizing storage.
    pub fn expose_digits(&self) -> &[u8] {
        self.digits.get(..usize::from(self.len)).unwrap_or_default()
    }

    /// The digits as nibble values 0–9.
    fn nibbles(&self) -> impl Iterator<Item = u8> + '_ {
        self.expose_digits().iter().map(|d| d - b'0')
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}

/// Constant-time comparison of the digits (and length).
impl PartialEq for Pin {
    fn eq(&self, other: &Pin) -> bool {
        (self.len.ct_eq(&other.len) & self.digits.ct_eq(&other.digits)).into()
    }
}

impl Eq for Pin {}

/// ISO 9564-1 PIN block formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PinBlockFormat {
    /// Format 0 (ANSI X9.8): PIN field ⊕ PAN field, fill `F`.
    Iso0,
    /// Format 1: no PAN, random fill.
    Iso1,
    /// Format 3: PIN field ⊕ PAN field, random fill `A`–`F`.
    Iso3,
    /// Format 4: 16-byte AES/SM4 block, `E(E(PIN field) ⊕ PAN field)`.
    Iso4,
}

impl PinBlockFormat {
    /// Whether the format binds the PAN.
    pub fn needs_pan(self) -> bool {
        !matches!(self, PinBlockFormat::Iso1)
    }

    /// Length of the clear (unenciphered) PIN block or PIN field: 8, or 16 for ISO 4.
    pub fn clear_len(self) -> usize {
        match self {
            PinBlockFormat::Iso4 => 16,
            _ => 8,
        }
    }
}

// ---- nibble helpers -------------------------------------------------------------------

fn pack(nibbles: &[u8; 16]) -> Zeroizing<[u8; 8]> {
    let mut out = Zeroizing::new([0u8; 8]);
    for (o, pair) in out.iter_mut().zip(nibbles.chunks_exact(2)) {
        if let [hi, lo] = pair {
            *o = (hi << 4) | (lo & 0x0F);
        }
    }
    out
}

fn unpack(bytes: &[u8; 8]) -> Zeroizing<[u8; 16]> {
    let mut out = Zeroizing::new([0u8; 16]);
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        if let [hi, lo] = pair {
            *hi = b >> 4;
            *lo = b & 0x0F;
        }
    }
    out
}

/// `C L P…P fill…` as 16 nibbles, the fill nibbles taken from `fill` in order.
fn pin_field_nibbles(control: u8, pin: &Pin, fill: &[u8; 14]) -> Zeroizing<[u8; 16]> {
    let mut n = Zeroizing::new([0u8; 16]);
    let [c, l, rest @ ..] = &mut *n;
    *c = control;
    *l = pin.len;
    for (slot, f) in rest.iter_mut().zip(fill) {
        *slot = *f;
    }
    for (slot, d) in rest.iter_mut().zip(pin.nibbles()) {
        *slot = d;
    }
    n
}

/// `0000 ‖ 12 rightmost PAN digits excluding the check digit`, as 8 bytes.
fn pan_field_iso0(pan: &Pan) -> [u8; 8] {
    // Not secret: packed directly, without `pack`'s zeroizing copy.
    let digits = pan.account_number_12();
    let mut field = [0u8; 8];
    for (o, pair) in field.iter_mut().skip(2).zip(digits.chunks_exact(2)) {
        if let [hi, lo] = pair {
            *o = (hi << 4) | lo;
        }
    }
    field
}

/// Random nibbles in `lo..=15`, unbiased (rejection sampling over OS random bytes).
fn random_nibbles(lo: u8) -> Zeroizing<[u8; 14]> {
    // invariant: callers pass 0x0 or 0xA, so this neither underflows nor is zero.
    let span = 16 - lo;
    // Largest multiple of `span` that fits in a byte: values at or above it are re-drawn.
    let limit = (256 / u16::from(span)) * u16::from(span);
    let mut out = Zeroizing::new([0u8; 14]);
    let mut pool = Zeroizing::new([0u8; 32]);
    let mut filled = 0;
    while filled < out.len() {
        random_bytes(pool.as_mut_slice());
        for b in pool.iter() {
            if u16::from(*b) < limit {
                if let Some(slot) = out.get_mut(filled) {
                    *slot = lo + b % span;
                    filled += 1;
                }
            }
        }
    }
    out
}

/// Checks and extracts the PIN from `C L P…P fill…` nibbles.
fn decode_pin_nibbles(
    n: &[u8; 16],
    control: u8,
    fill_ok: impl Fn(u8) -> bool,
) -> Result<Pin, CryptoError> {
    let [c, l, rest @ ..] = n;
    if *c != control {
        return Err(CryptoError::InvalidPinBlock("wrong control field"));
    }
    let len = usize::from(*l);
    if !(4..=12).contains(&len) {
        return Err(CryptoError::InvalidPinBlock("PIN length out of range 4-12"));
    }
    // invariant: `len <= 12 < rest.len() == 14`, so `split_at` cannot panic.
    let (digits, fill) = rest.split_at(len);
    if digits.iter().any(|d| *d > 9) {
        return Err(CryptoError::InvalidPinBlock("non-decimal PIN digit"));
    }
    if !fill.iter().all(|f| fill_ok(*f)) {
        return Err(CryptoError::InvalidPinBlock(
            "wrong fill digits (wrong key or PAN?)",
        ));
    }
    Ok(Pin::from_checked_nibbles(digits))
}

// ---- ISO formats 0, 1, 3 (clear 8-byte blocks) ----------------------------------------

/// Clear ISO format 0 block: `0 L PIN F…F ⊕ 0000 PAN12`.
pub fn encode_iso0(pin: &Pin, pan: &Pan) -> Zeroizing<[u8; 8]> {
    let mut block = pack(&pin_field_nibbles(0x0, pin, &[0xF; 14]));
    xor_in_place(block.as_mut_slice(), &pan_field_iso0(pan));
    block
}

/// Clear ISO format 1 block: `1 L PIN` and random fill. No PAN.
///
/// # Panics
/// If the OS RNG fails (see [`random_bytes`]).
pub fn encode_iso1(pin: &Pin) -> Zeroizing<[u8; 8]> {
    pack(&pin_field_nibbles(0x1, pin, &random_nibbles(0x0)))
}

/// Clear ISO format 3 block: `3 L PIN` and random fill `A`–`F`, ⊕ `0000 PAN12`.
///
/// # Panics
/// If the OS RNG fails (see [`random_bytes`]).
pub fn encode_iso3(pin: &Pin, pan: &Pan) -> Zeroizing<[u8; 8]> {
    let mut block = pack(&pin_field_nibbles(0x3, pin, &random_nibbles(0xA)));
    xor_in_place(block.as_mut_slice(), &pan_field_iso0(pan));
    block
}

/// Decodes a clear ISO format 0 block; strict (control 0, length 4–12, digits, fill `F`).
pub fn decode_iso0(block: &[u8; 8], pan: &Pan) -> Result<Pin, CryptoError> {
    let mut clear = Zeroizing::new(*block);
    xor_in_place(clear.as_mut_slice(), &pan_field_iso0(pan));
    decode_pin_nibbles(&unpack(&clear), 0x0, |f| f == 0xF)
}

/// Decodes a clear ISO format 1 block; strict (control 1, length 4–12, digits); any fill.
pub fn decode_iso1(block: &[u8; 8]) -> Result<Pin, CryptoError> {
    decode_pin_nibbles(&unpack(block), 0x1, |_| true)
}

/// Decodes a clear ISO format 3 block; strict (control 3, length 4–12, digits, fill
/// `A`–`F`).
pub fn decode_iso3(block: &[u8; 8], pan: &Pan) -> Result<Pin, CryptoError> {
    let mut clear = Zeroizing::new(*block);
    xor_in_place(clear.as_mut_slice(), &pan_field_iso0(pan));
    decode_pin_nibbles(&unpack(&clear), 0x3, |f| f >= 0xA)
}

// ---- ISO format 4 ----------------------------------------------------------------------

/// ISO 4 plain-text PIN field: `4 L PIN A…A` (8 bytes) ‖ `random` (8 bytes).
pub fn encode_iso4_pin_field(pin: &Pin, random: &[u8; 8]) -> Zeroizing<[u8; 16]> {
    let head = pack(&pin_field_nibbles(0x4, pin, &[0xA; 14]));
    let mut field = Zeroizing::new([0u8; 16]);
    let (a, b) = field.split_at_mut(8);
    a.copy_from_slice(head.as_slice());
    b.copy_from_slice(random);
    field
}

/// ISO 4 plain-text PAN field: `M` (PAN length − 12), the PAN digits, then zeros.
pub fn encode_iso4_pan_field(pan: &Pan) -> [u8; 16] {
    let mut n = [0u8; 32];
    let [m, rest @ ..] = &mut n;
    // invariant: a Pan has 12..=19 digits, so this is 0..=7 and cannot underflow.
    *m = (pan.len() - 12) as u8;
    for (slot, d) in rest.iter_mut().zip(pan.as_bytes()) {
        *slot = d - b'0';
    }
    let mut out = [0u8; 16];
    for (o, pair) in out.iter_mut().zip(n.chunks_exact(2)) {
        if let [hi, lo] = pair {
            *o = (hi << 4) | lo;
        }
    }
    out
}

/// Decodes an ISO 4 plain-text PIN field; strict (control 4, length 4–12, digits,
/// fill `A`); the 8 random bytes are not checked.
pub fn decode_iso4_pin_field(field: &[u8; 16]) -> Result<Pin, CryptoError> {
    let mut head = Zeroizing::new([0u8; 8]);
    head.copy_from_slice(field.get(..8).unwrap_or_default());
    decode_pin_nibbles(&unpack(&head), 0x4, |f| f == 0xA)
}

fn require_16_byte_block(cipher: &Cipher) -> Result<(), CryptoError> {
    if cipher.block_len() == 16 {
        Ok(())
    } else {
        Err(CryptoError::Unsupported(
            "ISO 9564 format 4 needs a 16-byte-block cipher (AES or SM4)",
        ))
    }
}

/// ISO 4 with caller-chosen random bytes. For known-answer tests; production code calls
/// [`encipher_iso4`], which draws them from the OS RNG.
pub fn encipher_iso4_with_random(
    cipher: &Cipher,
    pin: &Pin,
    pan: &Pan,
    random: &[u8; 8],
) -> Result<[u8; 16], CryptoError> {
    require_16_byte_block(cipher)?;
    let mut block = encode_iso4_pin_field(pin, random);
    cipher.encrypt_checked(block.as_mut_slice());
    xor_in_place(block.as_mut_slice(), &encode_iso4_pan_field(pan));
    cipher.encrypt_checked(block.as_mut_slice());
    Ok(*block)
}

/// Enciphers an ISO format 4 PIN block: `E(E(PIN field) ⊕ PAN field)` under an AES or
/// SM4 cipher, with 8 fresh random bytes.
pub fn encipher_iso4(cipher: &Cipher, pin: &Pin, pan: &Pan) -> Result<[u8; 16], CryptoError> {
    let mut random = Zeroizing::new([0u8; 8]);
    random_bytes(random.as_mut_slice());
    encipher_iso4_with_random(cipher, pin, pan, &random)
}

/// Deciphers and strictly decodes a 16-byte ISO format 4 PIN block.
pub fn decipher_iso4(cipher: &Cipher, block: &[u8], pan: &Pan) -> Result<Pin, CryptoError> {
    require_16_byte_block(cipher)?;
    let mut field = Zeroizing::new([0u8; 16]);
    if block.len() != 16 {
        return Err(CryptoError::InvalidDataLength {
            operation: "ISO 9564 format 4 PIN block",
            requirement: "must be 16 bytes",
            actual: block.len(),
        });
    }
    field.copy_from_slice(block);
    cipher.decrypt_checked(field.as_mut_slice());
    xor_in_place(field.as_mut_slice(), &encode_iso4_pan_field(pan));
    cipher.decrypt_checked(field.as_mut_slice());
    decode_iso4_pin_field(&field)
}

// ---- format-generic helpers -------------------------------------------------------------

fn require_pan(format: PinBlockFormat, pan: Option<&Pan>) -> Result<Option<&Pan>, CryptoError> {
    match (format.needs_pan(), pan) {
        (true, None) => Err(CryptoError::InvalidPan("this PIN block format needs a PAN")),
        (true, some) => Ok(some),
        (false, _) => Ok(None),
    }
}

/// Builds and enciphers a PIN block of `format` under `cipher`.
///
/// - ISO 0/1/3 under an 8-byte-block cipher: ECB of the 8-byte block.
/// - ISO 0/1/3 under a 16-byte-block cipher (SM4, AES): the 8-byte block followed by
///   8 zero bytes, then ECB (the UnionPay SM4 form).
/// - ISO 4: needs a 16-byte-block cipher, else `UNSUPPORTED`.
///
/// `pan` is required by ISO 0, 3 and 4 and ignored by ISO 1.
pub fn encipher(
    format: PinBlockFormat,
    cipher: &Cipher,
    pin: &Pin,
    pan: Option<&Pan>,
) -> Result<Vec<u8>, CryptoError> {
    let pan = require_pan(format, pan)?;
    let clear = match (format, pan) {
        (PinBlockFormat::Iso4, Some(pan)) => {
            return Ok(encipher_iso4(cipher, pin, pan)?.to_vec());
        }
        (PinBlockFormat::Iso0, Some(pan)) => encode_iso0(pin, pan),
        (PinBlockFormat::Iso3, Some(pan)) => encode_iso3(pin, pan),
        (PinBlockFormat::Iso1, _) => encode_iso1(pin),
        (_, None) => return Err(CryptoError::InvalidPan("this PIN block format needs a PAN")),
    };
    let mut out = vec![0u8; cipher.block_len()];
    for (o, c) in out.iter_mut().zip(clear.iter()) {
        *o = *c;
    }
    cipher.ecb_encrypt(&mut out)?;
    Ok(out)
}

/// Deciphers and strictly decodes a PIN block of `format` (the inverse of [`encipher`]).
/// For ISO 0/1/3 the block must be one cipher block (8 or 16 bytes); in the 16-byte form
/// the last 8 clear bytes must be zero, else `INVALID_PIN_BLOCK`.
pub fn decipher(
    format: PinBlockFormat,
    cipher: &Cipher,
    block: &[u8],
    pan: Option<&Pan>,
) -> Result<Pin, CryptoError> {
    let pan = require_pan(format, pan)?;
    if let (PinBlockFormat::Iso4, Some(pan)) = (format, pan) {
        return decipher_iso4(cipher, block, pan);
    }
    let (_, block8) = open_block(cipher, block)?;
    match (format, pan) {
        (PinBlockFormat::Iso0, Some(pan)) => decode_iso0(&block8, pan),
        (PinBlockFormat::Iso3, Some(pan)) => decode_iso3(&block8, pan),
        (PinBlockFormat::Iso1, _) => decode_iso1(&block8),
        _ => Err(CryptoError::InvalidPan("this PIN block format needs a PAN")),
    }
}

/// A deciphered block: the whole clear cipher block, and its 8-byte PIN block.
type Opened = (Zeroizing<[u8; 16]>, Zeroizing<[u8; 8]>);

/// Deciphers one ISO 0/1/3 block (8 bytes, or 16 in the UnionPay form whose
/// last 8 clear bytes must be zero): the clear cipher block (`len` = the
/// cipher's block length) and its 8-byte PIN block.
fn open_block(cipher: &Cipher, block: &[u8]) -> Result<Opened, CryptoError> {
    if block.len() != cipher.block_len() {
        return Err(CryptoError::InvalidDataLength {
            operation: "enciphered PIN block",
            requirement: "must be one cipher block",
            actual: block.len(),
        });
    }
    let mut whole = Zeroizing::new([0u8; 16]);
    let clear = whole
        .get_mut(..block.len())
        .ok_or(CryptoError::Unsupported(
            "cipher block longer than 16 bytes",
        ))?;
    clear.copy_from_slice(block);
    cipher.decrypt_checked(clear);
    let (head, padding) = clear.split_at(8.min(clear.len()));
    if padding.iter().any(|b| *b != 0) {
        return Err(CryptoError::InvalidPinBlock(
            "non-zero padding after the 8-byte PIN block",
        ));
    }
    let mut block8 = Zeroizing::new([0u8; 8]);
    block8.copy_from_slice(head);
    Ok((whole, block8))
}

/// Translates an ISO format 0 block from `src` to `dst` for the same PAN: the
/// block is deciphered and decoded exactly as [`decipher`] does (every check,
/// every error), then the clear block is enciphered under `dst` as it is.
/// Format 0 has no random fill, so that clear block is bit for bit what
/// [`encipher`] builds from the decoded PIN; this skips building it again.
/// Both ciphers must have the same block length (else `UNSUPPORTED`: use
/// [`decipher`] and [`encipher`]). Returns the block and the PIN's length.
pub fn translate_iso0(
    src: &Cipher,
    dst: &Cipher,
    block: &[u8],
    pan: &Pan,
) -> Result<(Vec<u8>, usize), CryptoError> {
    if src.block_len() != dst.block_len() {
        return Err(CryptoError::Unsupported(
            "ISO 0 translation in place needs equal block lengths",
        ));
    }
    let (clear, block8) = open_block(src, block)?;
    let pin_len = decode_iso0(&block8, pan)?.len();
    // The Vec holds the clear block only until the next line enciphers it in place.
    let mut out = clear
        .get(..block.len())
        .ok_or(CryptoError::Unsupported(
            "cipher block longer than 16 bytes",
        ))?
        .to_vec();
    dst.encrypt_checked(&mut out);
    Ok((out, pin_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `translate_iso0` must answer exactly what `decipher` then `encipher`
    /// answer (the general path, checked against published vectors in
    /// tests/crypto_kat.rs and against psec in tests/crypto_crosscheck.rs):
    /// the same block, or the same error. Random keys of both block lengths,
    /// random PANs, valid blocks and random ones.
    #[test]
    fn iso0_translation_in_place_equals_decode_then_encode() {
        use crate::crypto::cipher::Algorithm;
        let rand = |n: usize| {
            let mut v = vec![0u8; n];
            random_bytes(&mut v);
            v
        };
        let cipher = |alg, n| Cipher::new(alg, &rand(n)).unwrap();
        let pairs = [
            (Algorithm::Tdes2, 16, Algorithm::Tdes2, 16),
            (Algorithm::Tdes3, 24, Algorithm::Tdes2, 16),
            (Algorithm::Des, 8, Algorithm::Tdes3, 24),
            (Algorithm::Sm4, 16, Algorithm::Sm4, 16),
            (Algorithm::Aes128, 16, Algorithm::Sm4, 16),
            (Algorithm::Aes256, 32, Algorithm::Aes192, 24),
        ];
        let (mut valid, mut invalid) = (0, 0);
        for (a, an, b, bn) in pairs {
            for round in 0..600 {
                let (src, dst) = (cipher(a, an), cipher(b, bn));
                let r = rand(3);
                let digits: String = rand(19).iter().map(|b| char::from(b'0' + b % 10)).collect();
                let pan = Pan::parse(&digits[..12 + usize::from(r[0] % 8)]).unwrap();
                let pin: String = digits[..4 + usize::from(r[1] % 9)].chars().rev().collect();
                let pin = Pin::parse(&pin).unwrap();
                let block = match round % 3 {
                    // A valid block for a random PIN of 4–12 digits.
                    0 => encipher(PinBlockFormat::Iso0, &src, &pin, Some(&pan)).unwrap(),
                    // A valid PIN block followed by non-zero padding (16-byte ciphers).
                    1 if src.block_len() == 16 => {
                        let mut clear = encode_iso0(&pin, &pan).to_vec();
                        clear.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1 + r[2] % 255]);
                        src.encrypt_block(&mut clear).unwrap();
                        clear
                    }
                    _ => rand(src.block_len()),
                };
                let general =
                    decipher(PinBlockFormat::Iso0, &src, &block, Some(&pan)).and_then(|pin| {
                        let out = encipher(PinBlockFormat::Iso0, &dst, &pin, Some(&pan))?;
                        Ok((out, pin.len()))
                    });
                let in_place = translate_iso0(&src, &dst, &block, &pan);
                match (&general, &in_place) {
                    (Ok(g), Ok(p)) => {
                        assert_eq!(g, p);
                        valid += 1;
                    }
                    (Err(g), Err(p)) => {
                        assert_eq!(g.to_string(), p.to_string());
                        invalid += 1;
                    }
                    _ => panic!("{a:?}→{b:?}: general {general:?}, in place {in_place:?}"),
                }
            }
        }
        // Both branches ran many times (random blocks almost never decode).
        assert!(
            valid >= 1200 && invalid >= 2000,
            "{valid} valid, {invalid} invalid"
        );
        // Blocks of the wrong length and unequal block lengths are refused.
        let (tdes, sm4) = (cipher(Algorithm::Tdes2, 16), cipher(Algorithm::Sm4, 16));
        let pan = Pan::parse("6222020000000000008").unwrap();
        assert!(translate_iso0(&tdes, &tdes, &[0u8; 16], &pan).is_err());
        assert!(matches!(
            translate_iso0(&tdes, &sm4, &[0u8; 8], &pan),
            Err(CryptoError::Unsupported(_))
        ));
    }

    #[test]
    fn pan_debug_masks_the_middle() {
        let pan = Pan::parse("6230606601007726888").unwrap();
        assert_eq!(format!("{pan:?}"), "Pan(623060*********6888)");
    }

    #[test]
    fn pin_debug_is_redacted() {
        let pin = Pin::parse("123456").unwrap();
        assert_eq!(format!("{pin:?}"), "Pin(<redacted>)");
    }

    #[test]
    fn random_fill_nibbles_stay_in_range() {
        for _ in 0..200 {
            assert!(random_nibbles(0xA).iter().all(|n| (0xA..=0xF).contains(n)));
            assert!(random_nibbles(0x0).iter().all(|n| *n <= 0xF));
        }
    }
}
