//! The one parser of the payShield port: framing (2-byte big-endian length,
//! header, 2-character command code) and the field layouts of every command
//! this port serves. It is pure (no I/O, no keys, no `Hsm`), never panics on
//! any input, and is what `fuzzing::payshield_frame` drives.
//!
//! Field layouts follow the payShield 9000/10K host command reference as far as
//! public material shows them; docs/payshield.md lists every layout and where
//! this port deviates.

use super::code;

/// What [`split_frame`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Split {
    /// Not enough bytes yet for a whole frame.
    Incomplete,
    /// A whole frame: `len` payload bytes after the 2-byte length prefix.
    Frame { len: usize },
    /// The length prefix announces more than `max_frame` bytes: the stream
    /// cannot be resynchronised, so the connection is closed.
    TooLarge { len: usize },
}

/// Looks for one frame at the start of `buf` (length prefix included).
pub fn split_frame(buf: &[u8], max_frame: usize) -> Split {
    let Some(prefix) = buf.get(..2) else {
        return Split::Incomplete;
    };
    let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
    if len > max_frame {
        return Split::TooLarge { len };
    }
    if buf.len() < 2 + len {
        Split::Incomplete
    } else {
        Split::Frame { len }
    }
}

/// One frame's payload cut into header, command code and fields.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// Echoed in the response. Shorter than the configured header length only
    /// when the frame itself was (then `code` is `None`).
    pub header: &'a [u8],
    /// The 2-character command code; `None` when the frame has no room for one.
    pub code: Option<[u8; 2]>,
    pub body: &'a [u8],
}

/// Cuts a frame payload (without its length prefix).
pub fn split_request(payload: &[u8], header_len: usize) -> Request<'_> {
    if payload.len() < header_len + 2 {
        return Request {
            header: payload.get(..header_len).unwrap_or(payload),
            code: None,
            body: &[],
        };
    }
    let (header, rest) = payload.split_at(header_len);
    let (code, body) = rest.split_at(2);
    Request {
        header,
        code: Some([code[0], code[1]]),
        body,
    }
}

/// The response code of a command: the second character advanced by one
/// (CA→CB, M6→M7, NC→ND, A0→A1). `ZZ` for codes that have no successor.
pub fn response_code(cmd: [u8; 2]) -> [u8; 2] {
    let [a, b] = cmd;
    if !a.is_ascii_alphanumeric() {
        return *b"ZZ";
    }
    match b {
        b'0'..=b'8' | b'A'..=b'Y' => [a, b + 1],
        _ => *b"ZZ",
    }
}

/// Appends one framed response: length, header, response code, error code, fields.
/// A response that would not fit the 2-byte length is replaced by error 41.
pub fn write_response(out: &mut Vec<u8>, header: &[u8], resp: [u8; 2], error: &str, fields: &[u8]) {
    let too_long = header.len() + 2 + error.len() + fields.len() > usize::from(u16::MAX);
    let (error, fields) = if too_long || error.len() != 2 {
        (code::INTERNAL, &[][..])
    } else {
        (error, fields)
    };
    let len = header.len() + 2 + error.len() + fields.len();
    // invariant: header length is capped by the config (≤ 64), so `len` fits in a u16.
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(&resp);
    out.extend_from_slice(error.as_bytes());
    out.extend_from_slice(fields);
}

/// payShield PIN block format codes this port knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinFormat {
    /// `01`: ISO 9564-1 format 0 (ANSI X9.8).
    Iso0,
    /// `05`: ISO 9564-1 format 1.
    Iso1,
    /// `47`: ISO 9564-1 format 3.
    Iso3,
}

impl PinFormat {
    fn parse(f: &[u8]) -> Result<PinFormat, &'static str> {
        match f {
            b"01" => Ok(PinFormat::Iso0),
            b"05" => Ok(PinFormat::Iso1),
            b"47" => Ok(PinFormat::Iso3),
            _ => Err(code::INVALID_PIN_FORMAT),
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            PinFormat::Iso0 => "01",
            PinFormat::Iso1 => "05",
            PinFormat::Iso3 => "47",
        }
    }
}

/// CA (TPK→ZPK) and CC (ZPK→ZPK).
#[derive(Debug, PartialEq, Eq)]
pub struct TranslatePin<'a> {
    /// Source and destination keys: LMK key blocks (the text after `S`).
    pub source: &'a str,
    pub dest: &'a str,
    pub max_pin_len: usize,
    /// The enciphered PIN block (hex decoded): 8 bytes, or 16 under an AES/SM4 key.
    pub pin_block: Vec<u8>,
    pub source_format: PinFormat,
    pub dest_format: PinFormat,
    /// 12 digits: the rightmost 12 of the PAN without its check digit.
    pub account: &'a str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacAlg {
    /// `1`: ISO 9797-1 MAC algorithm 1 (X9.9 with a single-DES key).
    Alg1,
    /// `3`: ISO 9797-1 MAC algorithm 3 (X9.19 retail MAC).
    Alg3,
}

/// M6 (generate) and M8 (verify).
#[derive(Debug, PartialEq, Eq)]
pub struct Mac<'a> {
    /// MAC size in bytes: 4 (`0`, 8H) or 8 (`1`, 16H).
    pub mac_len: usize,
    pub algorithm: MacAlg,
    /// ISO 9797-1 padding method 0 (none), 1, 2 or 3.
    pub padding: u8,
    /// `003` (TAK), `008` (ZAK) or `FFF` (key block).
    pub key_type: [u8; 3],
    pub key: &'a str,
    /// The message as bytes (hex-decoded for input format 1).
    pub message: Vec<u8>,
    /// M8 only: the MAC to check (hex-decoded).
    pub mac: Vec<u8>,
}

/// The `#` key block attributes of A0/A6 (key scheme `S`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyAttrs {
    pub usage: [u8; 2],
    pub algorithm: [u8; 2],
    pub mode_of_use: u8,
    pub exportability: u8,
}

/// The trailing optional fields: `%` LMK identifier, `#` key block attributes,
/// `&` exportability of an exported key block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tail {
    pub attrs: Option<KeyAttrs>,
    pub export_exportability: Option<u8>,
}

/// A key under a ZMK/TMK as carried by A6/FA and returned by A0/A8.
#[derive(Debug, PartialEq, Eq)]
pub enum Wrapped<'a> {
    /// `X` + 32H, `Y` + 48H or bare 16H: ANSI X9.17, ECB under the ZMK.
    X917(Vec<u8>),
    /// `R` + a TR-31 key block under the ZMK.
    Tr31(&'a str),
}

/// How A0/A8 should return a key under a ZMK/TMK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZmkScheme {
    /// `X`: double-length key, X9.17 ECB.
    X,
    /// `Y`: triple-length key, X9.17 ECB.
    Y,
    /// `R`: TR-31 key block.
    R,
}

impl ZmkScheme {
    fn parse(c: u8) -> Result<ZmkScheme, &'static str> {
        match c {
            b'X' => Ok(ZmkScheme::X),
            b'Y' => Ok(ZmkScheme::Y),
            b'R' => Ok(ZmkScheme::R),
            _ => Err(code::INVALID_KEY_SCHEME),
        }
    }
}

/// A0: generate a key, optionally also under a ZMK/TMK.
#[derive(Debug, PartialEq, Eq)]
pub struct GenerateKey<'a> {
    pub key_type: [u8; 3],
    /// Mode 1: the ZMK/TMK and the scheme to return the key under it in.
    pub under: Option<(&'a str, ZmkScheme)>,
    pub tail: Tail,
}

/// A6: import a key under a ZMK; FA: translate a ZPK from ZMK to LMK.
#[derive(Debug, PartialEq, Eq)]
pub struct ImportKey<'a> {
    /// A6's key type code; `001` (ZPK) for FA.
    pub key_type: [u8; 3],
    pub zmk: &'a str,
    pub key: Wrapped<'a>,
    /// FA: 16H (false) or 6H (true) check value.
    pub short_kcv: bool,
    pub tail: Tail,
}

/// A8: export a key under a ZMK/TMK.
#[derive(Debug, PartialEq, Eq)]
pub struct ExportKey<'a> {
    pub key_type: [u8; 3],
    pub zmk: &'a str,
    pub key: &'a str,
    pub scheme: ZmkScheme,
    pub tail: Tail,
}

/// BU: key check value.
#[derive(Debug, PartialEq, Eq)]
pub struct CheckValue<'a> {
    pub key: &'a str,
    /// 6H (true) or 16H (false, the default).
    pub short: bool,
}

/// A parsed command.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Nc,
    A0(GenerateKey<'a>),
    A6(ImportKey<'a>),
    A8(ExportKey<'a>),
    Bu(CheckValue<'a>),
    Ca(TranslatePin<'a>),
    Cc(TranslatePin<'a>),
    Fa(ImportKey<'a>),
    M6(Mac<'a>),
    M8(Mac<'a>),
}

/// Every command code this port implements.
pub const IMPLEMENTED: [&str; 10] = ["NC", "A0", "A6", "A8", "BU", "CA", "CC", "FA", "M6", "M8"];

/// Key type codes A0/A6/A8 accept (payShield's variant-LMK key type table).
pub const KEY_TYPE_CODES: [&[u8; 3]; 8] = [
    b"000", b"001", b"002", b"003", b"008", b"00A", b"00B", b"FFF",
];

/// A cursor over a command's fields.
struct Cur<'a> {
    b: &'a [u8],
}

type R<T> = Result<T, &'static str>;

fn ascii(b: &[u8]) -> R<&str> {
    std::str::from_utf8(b).map_err(|_| code::INVALID_INPUT)
}

fn hex_decode(b: &[u8]) -> R<Vec<u8>> {
    if b.len() % 2 != 0 {
        return Err(code::INVALID_INPUT);
    }
    hex::decode(b).map_err(|_| code::INVALID_INPUT)
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        if self.b.len() < n {
            return Err(code::INVALID_INPUT);
        }
        let (a, b) = self.b.split_at(n);
        self.b = b;
        Ok(a)
    }

    fn byte(&mut self) -> R<u8> {
        let (&c, rest) = self.b.split_first().ok_or(code::INVALID_INPUT)?;
        self.b = rest;
        Ok(c)
    }

    fn peek(&self) -> Option<u8> {
        self.b.first().copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.b = &self.b[1..];
            true
        } else {
            false
        }
    }

    fn decimal(&mut self, n: usize) -> R<usize> {
        let d = self.take(n)?;
        if !d.iter().all(u8::is_ascii_digit) {
            return Err(code::INVALID_INPUT);
        }
        Ok(d.iter()
            .fold(0usize, |acc, c| acc * 10 + usize::from(c - b'0')))
    }

    fn hex(&mut self, n: usize) -> R<Vec<u8>> {
        hex_decode(self.take(n)?)
    }

    fn array<const N: usize>(&mut self) -> R<[u8; N]> {
        let b = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    /// A block whose total length is the 4 decimal digits after its first character
    /// (TR-31 and our LMK blocks alike).
    fn block(&mut self) -> R<&'a str> {
        let head = self.b.get(..5).ok_or(code::INVALID_INPUT)?;
        let digits = &head[1..5];
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(code::INVALID_INPUT);
        }
        let len = digits
            .iter()
            .fold(0usize, |acc, c| acc * 10 + usize::from(c - b'0'));
        if !(16..=MAX_BLOCK).contains(&len) {
            return Err(code::INVALID_INPUT);
        }
        let block = self.take(len)?;
        if !block.iter().all(|c| c.is_ascii_graphic()) {
            return Err(code::INVALID_INPUT);
        }
        ascii(block)
    }

    /// A key under the LMK: `S` + our LMK key block. The variant forms
    /// (`U`/`X`/`T`/`Y`/`Z` + hex, or bare hex) need a variant LMK we do not have.
    fn lmk_key(&mut self) -> R<&'a str> {
        match self.peek() {
            Some(b'S') => {
                self.b = &self.b[1..];
                self.block()
            }
            Some(b'U' | b'X' | b'T' | b'Y' | b'Z') => Err(code::VARIANT_KEY),
            Some(c) if c.is_ascii_hexdigit() => Err(code::VARIANT_KEY),
            _ => Err(code::INVALID_INPUT),
        }
    }

    /// A key under a ZMK (A6, FA).
    fn wrapped_key(&mut self) -> R<Wrapped<'a>> {
        match self.peek() {
            Some(b'X') => {
                self.b = &self.b[1..];
                Ok(Wrapped::X917(self.hex(32)?))
            }
            Some(b'Y') => {
                self.b = &self.b[1..];
                Ok(Wrapped::X917(self.hex(48)?))
            }
            Some(b'R') => {
                self.b = &self.b[1..];
                Ok(Wrapped::Tr31(self.block()?))
            }
            Some(c) if c.is_ascii_hexdigit() => Ok(Wrapped::X917(self.hex(16)?)),
            Some(b'U' | b'T' | b'Z' | b'S') => Err(code::INVALID_KEY_SCHEME),
            _ => Err(code::INVALID_INPUT),
        }
    }

    /// Key scheme (LMK): only `S` (key block) exists here.
    fn lmk_scheme(&mut self) -> R<()> {
        match self.byte()? {
            b'S' => Ok(()),
            b'U' | b'T' | b'X' | b'Y' | b'Z' => Err(code::VARIANT_KEY),
            _ => Err(code::INVALID_KEY_SCHEME),
        }
    }

    fn key_type(&mut self) -> R<[u8; 3]> {
        let t: [u8; 3] = self.array()?;
        if KEY_TYPE_CODES.iter().any(|k| **k == t) {
            Ok(t)
        } else {
            Err(code::INVALID_KEY_TYPE_CODE)
        }
    }

    /// Trailing optional fields, in any order, each at most once; nothing may follow.
    fn tail(&mut self, allow_attrs: bool, allow_export: bool) -> R<Tail> {
        let mut tail = Tail::default();
        let mut seen_lmk = false;
        while let Some(c) = self.peek() {
            self.b = &self.b[1..];
            match c {
                b'%' if !seen_lmk => {
                    seen_lmk = true;
                    match self.take(2)? {
                        b"00" | b"01" => {}
                        _ => return Err(code::INVALID_LMK_ID),
                    }
                }
                b'#' if allow_attrs && tail.attrs.is_none() => {
                    let usage: [u8; 2] = self.array()?;
                    let algorithm: [u8; 2] = self.array()?;
                    let mode_of_use = self.byte()?;
                    let _kvn = self.decimal(2)?;
                    let exportability = self.byte()?;
                    if !matches!(exportability, b'E' | b'N' | b'S') {
                        return Err(code::INVALID_EXPORT_FIELD);
                    }
                    let n = self.decimal(2)?;
                    for _ in 0..n {
                        // Optional block: 2A id, 2H length (of the whole block), data.
                        let _id = self.take(2)?;
                        let len = self.take(2)?;
                        let len = usize::from_str_radix(ascii(len)?, 16)
                            .map_err(|_| code::INVALID_INPUT)?;
                        if len < 4 {
                            return Err(code::INVALID_INPUT);
                        }
                        self.take(len - 4)?;
                    }
                    if !mode_of_use.is_ascii_alphanumeric() {
                        return Err(code::INVALID_INPUT);
                    }
                    tail.attrs = Some(KeyAttrs {
                        usage,
                        algorithm,
                        mode_of_use,
                        exportability,
                    });
                }
                b'&' if allow_export && tail.export_exportability.is_none() => {
                    let e = self.byte()?;
                    if !matches!(e, b'E' | b'N' | b'S') {
                        return Err(code::INVALID_EXPORT_FIELD);
                    }
                    tail.export_exportability = Some(e);
                }
                _ => return Err(code::INVALID_INPUT),
            }
        }
        Ok(tail)
    }

    fn end(&mut self) -> R<()> {
        self.tail(false, false).map(|_| ())
    }
}

/// Longest key block accepted in a field (the core's own limit).
pub const MAX_BLOCK: usize = 4096;

/// The cipher block length of an LMK key block's key, from its (authenticated)
/// header: TR-31 algorithm code at offset 7. DES/TDES → 8, AES/SM4 → 16.
pub(crate) fn block_cipher_len(block: &str) -> usize {
    match block.as_bytes().get(7) {
        Some(b'A' | b'4') => 16,
        _ => 8,
    }
}

/// Parses a command's fields. `Err` is the payShield error code to answer with.
/// The caller has already checked that `code` is implemented and enabled.
pub fn parse_command(cmd: [u8; 2], body: &[u8]) -> R<Command<'_>> {
    let mut c = Cur { b: body };
    match &cmd {
        b"NC" => Ok(Command::Nc),
        b"CA" | b"CC" => {
            let source = c.lmk_key()?;
            let dest = c.lmk_key()?;
            let max_pin_len = c.decimal(2)?;
            if !(4..=12).contains(&max_pin_len) {
                return Err(code::INVALID_INPUT);
            }
            let pin_block = c.hex(2 * block_cipher_len(source))?;
            let source_format = PinFormat::parse(c.take(2)?)?;
            let dest_format = PinFormat::parse(c.take(2)?)?;
            let account = c.take(12)?;
            if !account.iter().all(u8::is_ascii_digit) {
                return Err(code::INVALID_INPUT);
            }
            c.end()?;
            let t = TranslatePin {
                source,
                dest,
                max_pin_len,
                pin_block,
                source_format,
                dest_format,
                account: ascii(account)?,
            };
            Ok(if &cmd == b"CA" {
                Command::Ca(t)
            } else {
                Command::Cc(t)
            })
        }
        b"M6" | b"M8" => {
            if c.byte()? != b'0' {
                return Err(code::INVALID_MODE_FLAG);
            }
            let input_format = c.byte()?;
            if !matches!(input_format, b'0'..=b'2') {
                return Err(code::INVALID_INPUT_FORMAT);
            }
            let mac_len = match c.byte()? {
                b'0' => 4,
                b'1' => 8,
                _ => return Err(code::INVALID_MAC_ALGORITHM),
            };
            let algorithm = match c.byte()? {
                b'1' => MacAlg::Alg1,
                b'3' => MacAlg::Alg3,
                _ => return Err(code::INVALID_MAC_ALGORITHM),
            };
            let padding = c.byte()?;
            if !matches!(padding, b'0'..=b'3') {
                return Err(code::INVALID_PADDING);
            }
            let key_type: [u8; 3] = c.array()?;
            if !matches!(&key_type, b"003" | b"008" | b"FFF") {
                return Err(code::INVALID_KEY_TYPE_FIELD);
            }
            let key = c.lmk_key()?;
            let len = c.take(4).map_err(|_| code::INVALID_MESSAGE_LENGTH)?;
            let len = ascii(len)
                .ok()
                .filter(|s| s.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|s| usize::from_str_radix(s, 16).ok())
                .ok_or(code::INVALID_MESSAGE_LENGTH)?;
            let raw = c.take(len).map_err(|_| code::DATA_LENGTH)?;
            let message = if input_format == b'1' {
                hex_decode(raw)?
            } else {
                raw.to_vec()
            };
            let mac = if &cmd == b"M8" {
                c.hex(2 * mac_len)?
            } else {
                Vec::new()
            };
            c.end()?;
            let m = Mac {
                mac_len,
                algorithm,
                padding: padding - b'0',
                key_type,
                key,
                message,
                mac,
            };
            Ok(if &cmd == b"M6" {
                Command::M6(m)
            } else {
                Command::M8(m)
            })
        }
        b"BU" => {
            let type_code = c.take(2)?;
            if !type_code.iter().all(u8::is_ascii_alphanumeric) {
                return Err(code::INVALID_KEY_TYPE_CODE);
            }
            if !matches!(c.byte()?, b'0' | b'1' | b'2' | b'F') {
                return Err(code::INVALID_KEY_LENGTH_FLAG);
            }
            let key = c.lmk_key()?;
            let mut short = false;
            if c.eat(b';') {
                let first = c.take(3)?;
                let kcv_group = if c.eat(b';') {
                    Some(c.take(3)?)
                } else if type_code != b"FF" {
                    // The key type is present only when the key type code is FF.
                    Some(first)
                } else {
                    None
                };
                if let Some(g) = kcv_group {
                    short = match g {
                        b"000" => false,
                        b"001" => true,
                        _ => return Err(code::INVALID_INPUT),
                    };
                }
            }
            c.end()?;
            Ok(Command::Bu(CheckValue { key, short }))
        }
        b"A0" => {
            let mode = c.byte()?;
            if !matches!(mode, b'0' | b'1') {
                return Err(code::INVALID_INPUT);
            }
            let key_type = c.key_type()?;
            c.lmk_scheme()?;
            let under = if mode == b'1' {
                if c.eat(b';') && !matches!(c.byte()?, b'0' | b'1') {
                    return Err(code::INVALID_INPUT);
                }
                let zmk = c.lmk_key()?;
                let scheme = ZmkScheme::parse(c.byte()?)?;
                Some((zmk, scheme))
            } else {
                None
            };
            let tail = c.tail(true, mode == b'1')?;
            Ok(Command::A0(GenerateKey {
                key_type,
                under,
                tail,
            }))
        }
        b"A6" => {
            let key_type = c.key_type()?;
            let zmk = c.lmk_key()?;
            let key = c.wrapped_key()?;
            c.lmk_scheme()?;
            let tail = c.tail(true, false)?;
            Ok(Command::A6(ImportKey {
                key_type,
                zmk,
                key,
                short_kcv: true,
                tail,
            }))
        }
        b"FA" => {
            let zmk = c.lmk_key()?;
            let key = c.wrapped_key()?;
            let mut short_kcv = false;
            if c.eat(b';') {
                let _scheme_zmk = c.byte()?;
                c.lmk_scheme()?;
                short_kcv = match c.byte()? {
                    b'0' => false,
                    b'1' => true,
                    _ => return Err(code::INVALID_INPUT),
                };
            }
            let tail = c.tail(true, false)?;
            Ok(Command::Fa(ImportKey {
                key_type: *b"001",
                zmk,
                key,
                short_kcv,
                tail,
            }))
        }
        b"A8" => {
            let key_type = c.key_type()?;
            if c.eat(b';') && !matches!(c.byte()?, b'0' | b'1') {
                return Err(code::INVALID_INPUT);
            }
            let zmk = c.lmk_key()?;
            let key = c.lmk_key()?;
            let scheme = ZmkScheme::parse(c.byte()?)?;
            let tail = c.tail(false, true)?;
            Ok(Command::A8(ExportKey {
                key_type,
                zmk,
                key,
                scheme,
                tail,
            }))
        }
        _ => Err(code::UNKNOWN_COMMAND),
    }
}
