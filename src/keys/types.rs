//! Key types and their rules: which TR-31 usage, algorithms, operations and
//! exportability each domain key type has. This table is the policy every
//! operation consults — through the key block's own header, never a side table.

use crate::crypto::Algorithm;
use keyblocks::{KeyUsage, ModeOfUse};

/// The domain key types of API.md (`TPK` = UnionPay PIK, `TAK` = MAK).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyType {
    Tmk,
    Zmk,
    Kek,
    Tpk,
    Zpk,
    Tak,
    Zak,
    Tdk,
    Zek,
}

/// What a key may be used for: the four classes the operations check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyClass {
    /// Wraps other keys (TR-31 `K0`): TMK, ZMK, KEK.
    KeyEncryption,
    /// Encrypts PIN blocks (`P0`): TPK, ZPK.
    Pin,
    /// Generates and verifies MACs (`M1`/`M3`/`M6`): TAK, ZAK.
    Mac,
    /// Encrypts data such as track 2 (`D0`): TDK, ZEK.
    Data,
}

impl KeyType {
    pub const ALL: [KeyType; 9] = [
        KeyType::Tmk,
        KeyType::Zmk,
        KeyType::Kek,
        KeyType::Tpk,
        KeyType::Zpk,
        KeyType::Tak,
        KeyType::Zak,
        KeyType::Tdk,
        KeyType::Zek,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KeyType::Tmk => "TMK",
            KeyType::Zmk => "ZMK",
            KeyType::Kek => "KEK",
            KeyType::Tpk => "TPK",
            KeyType::Zpk => "ZPK",
            KeyType::Tak => "TAK",
            KeyType::Zak => "ZAK",
            KeyType::Tdk => "TDK",
            KeyType::Zek => "ZEK",
        }
    }

    pub fn parse(s: &str) -> Option<KeyType> {
        let up = s.to_ascii_uppercase();
        let alias = match up.as_str() {
            "PIK" => "TPK",
            "MAK" => "TAK",
            other => other,
        };
        KeyType::ALL.into_iter().find(|t| t.name() == alias)
    }

    pub fn class(self) -> KeyClass {
        match self {
            KeyType::Tmk | KeyType::Zmk | KeyType::Kek => KeyClass::KeyEncryption,
            KeyType::Tpk | KeyType::Zpk => KeyClass::Pin,
            KeyType::Tak | KeyType::Zak => KeyClass::Mac,
            KeyType::Tdk | KeyType::Zek => KeyClass::Data,
        }
    }

    /// Algorithms a key of this type may have. Single DES is listed only for the
    /// types that legacy layouts need; the config must still enable it
    /// (`allow_single_des`), except for the single-length MAK of UNIONPAY_003/004.
    pub fn allows(self, alg: Algorithm) -> bool {
        match alg {
            Algorithm::Des => matches!(
                self,
                KeyType::Tmk | KeyType::Tpk | KeyType::Tak | KeyType::Zak | KeyType::Zpk
            ),
            _ => true,
        }
    }

    /// The TR-31 usage this type maps to for a given algorithm.
    pub fn usage(self, alg: Algorithm) -> KeyUsage {
        match self.class() {
            KeyClass::KeyEncryption => KeyUsage::K0,
            KeyClass::Pin => KeyUsage::P0,
            KeyClass::Data => KeyUsage::D0,
            KeyClass::Mac => match alg {
                // single DES: ISO 9797-1 alg 1 (X9.9) is all it can do
                Algorithm::Des => KeyUsage::M1,
                Algorithm::Tdes2 | Algorithm::Tdes3 => KeyUsage::M3,
                // 128-bit block ciphers: CMAC family
                Algorithm::Aes128 | Algorithm::Aes192 | Algorithm::Aes256 | Algorithm::Sm4 => {
                    KeyUsage::M6
                }
            },
        }
    }

    /// TR-31 mode of use for keys this module creates: KEKs and data keys wrap
    /// and unwrap / encrypt and decrypt (`B`), MAC keys generate and verify (`C`).
    pub fn mode_of_use(self) -> ModeOfUse {
        match self.class() {
            KeyClass::Mac => ModeOfUse::C,
            _ => ModeOfUse::B,
        }
    }

    /// Whether a TR-31 usage found in a foreign block is acceptable for this type.
    pub fn accepts_usage(self, usage: KeyUsage) -> bool {
        match self.class() {
            KeyClass::KeyEncryption => usage == KeyUsage::K0,
            KeyClass::Pin => usage == KeyUsage::P0,
            KeyClass::Data => usage == KeyUsage::D0,
            KeyClass::Mac => {
                usage == KeyUsage::M0
                    || usage == KeyUsage::M1
                    || usage == KeyUsage::M3
                    || usage == KeyUsage::M6
            }
        }
    }
}

impl std::fmt::Display for KeyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The TR-31 algorithm code for each of our algorithms. TR-31 / X9.143 defines
/// no code for SM4; inside our own LMK blocks SM4 is `'4'` (documented in
/// ARCHITECTURE.md). SM4 keys are never exported as TR-31.
pub fn tr31_algorithm(alg: Algorithm) -> keyblocks::Algorithm {
    match alg {
        Algorithm::Des => keyblocks::Algorithm::DES,
        Algorithm::Tdes2 | Algorithm::Tdes3 => keyblocks::Algorithm::TDES,
        Algorithm::Aes128 | Algorithm::Aes192 | Algorithm::Aes256 => keyblocks::Algorithm::AES,
        Algorithm::Sm4 => keyblocks::Algorithm(SM4_TR31_CODE),
    }
}

/// Our proprietary TR-31 algorithm code for SM4 keys in LMK blocks.
pub const SM4_TR31_CODE: u8 = b'4';

/// The algorithm of a key found in a TR-31 block, from its header code and length.
pub fn algorithm_from_tr31(code: keyblocks::Algorithm, key_len: usize) -> Option<Algorithm> {
    match (code.0, key_len) {
        (b'D', 8) => Some(Algorithm::Des),
        (b'T', 16) => Some(Algorithm::Tdes2),
        (b'T', 24) => Some(Algorithm::Tdes3),
        (b'A', 16) => Some(Algorithm::Aes128),
        (b'A', 24) => Some(Algorithm::Aes192),
        (b'A', 32) => Some(Algorithm::Aes256),
        (SM4_TR31_CODE, 16) => Some(Algorithm::Sm4),
        _ => None,
    }
}

/// Effective strength in bits, for the rule "never wrap a key under a weaker key"
/// (ANSI X9.24-1 / NIST SP 800-57 comparable strengths).
pub fn strength_bits(alg: Algorithm) -> u32 {
    match alg {
        Algorithm::Des => 56,
        Algorithm::Tdes2 => 80,
        Algorithm::Tdes3 => 112,
        Algorithm::Aes128 | Algorithm::Sm4 => 128,
        Algorithm::Aes192 => 192,
        Algorithm::Aes256 => 256,
    }
}

/// API names of algorithms (`KeyAlgorithm` in the proto).
pub fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::Des => "DES",
        Algorithm::Tdes2 => "TDES_2KEY",
        Algorithm::Tdes3 => "TDES_3KEY",
        Algorithm::Aes128 => "AES_128",
        Algorithm::Aes192 => "AES_192",
        Algorithm::Aes256 => "AES_256",
        Algorithm::Sm4 => "SM4",
    }
}

pub fn parse_algorithm(s: &str) -> Option<Algorithm> {
    let up = s.to_ascii_uppercase().replace('-', "_");
    let all = [
        Algorithm::Des,
        Algorithm::Tdes2,
        Algorithm::Tdes3,
        Algorithm::Aes128,
        Algorithm::Aes192,
        Algorithm::Aes256,
        Algorithm::Sm4,
    ];
    let alias = match up.as_str() {
        "TDES" | "3DES" | "TDES2" => "TDES_2KEY",
        "TDES3" => "TDES_3KEY",
        "AES128" => "AES_128",
        "AES192" => "AES_192",
        "AES256" => "AES_256",
        other => other,
    };
    all.into_iter().find(|a| algorithm_name(*a) == alias)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_maps_to_the_tr31_usage_of_its_class() {
        assert_eq!(KeyType::Tmk.usage(Algorithm::Tdes2), KeyUsage::K0);
        assert_eq!(KeyType::Zmk.usage(Algorithm::Aes256), KeyUsage::K0);
        assert_eq!(KeyType::Zpk.usage(Algorithm::Tdes2), KeyUsage::P0);
        assert_eq!(KeyType::Tak.usage(Algorithm::Des), KeyUsage::M1);
        assert_eq!(KeyType::Tak.usage(Algorithm::Tdes2), KeyUsage::M3);
        assert_eq!(KeyType::Zak.usage(Algorithm::Aes128), KeyUsage::M6);
        assert_eq!(KeyType::Tdk.usage(Algorithm::Tdes2), KeyUsage::D0);
    }

    #[test]
    fn a_pin_key_does_not_accept_a_mac_usage() {
        assert!(!KeyType::Zpk.accepts_usage(KeyUsage::M3));
        assert!(!KeyType::Zak.accepts_usage(KeyUsage::P0));
        assert!(!KeyType::Kek.accepts_usage(KeyUsage::D0));
        assert!(KeyType::Zak.accepts_usage(KeyUsage::M1));
    }

    #[test]
    fn names_round_trip_and_unionpay_aliases_parse() {
        for t in KeyType::ALL {
            assert_eq!(KeyType::parse(t.name()), Some(t));
        }
        assert_eq!(KeyType::parse("pik"), Some(KeyType::Tpk));
        assert_eq!(KeyType::parse("MAK"), Some(KeyType::Tak));
        assert_eq!(KeyType::parse("XYZ"), None);
    }
}
