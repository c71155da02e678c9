//! The other parties of a POS business day, computed independently of the HSM
//! core with the `crypto` primitives: the PIN pad (knows its TMK, loads field 62,
//! builds ISO 0 PIN blocks, computes and checks UnionPay ECB MACs, encrypts track
//! data) and the card network (knows the clear ZPK and ZAK). Used by `MockHsm`
//! (feature `testing`), `poshsm simulate` and `poshsm bench`. Test and
//! simulation keys only: these types hold clear keys by design.

use crate::crypto::pinblock::{self, Pan, Pin, PinBlockFormat};
use crate::crypto::{deskey, kcv, mac, random_bytes, Algorithm, Cipher};
use crate::proto as pb;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// DES for 8-byte keys, two-key TDES otherwise.
pub fn tdes_or_des(key: &[u8]) -> Result<Cipher, String> {
    let alg = if key.len() == 8 {
        Algorithm::Des
    } else {
        Algorithm::Tdes2
    };
    Cipher::new(alg, key).map_err(|e| e.to_string())
}

/// A random 16-byte TDES key part with odd parity.
pub fn odd_parity_component() -> Vec<u8> {
    let mut c = vec![0u8; 16];
    random_bytes(&mut c);
    deskey::adjust_odd_parity(&mut c);
    c
}

/// Three odd-parity components and the clear TDES key they XOR to (which keeps
/// odd parity, so the HSM forms exactly this key).
pub fn tdes_components() -> (Vec<Vec<u8>>, Zeroizing<Vec<u8>>) {
    let parts: Vec<Vec<u8>> = (0..3).map(|_| odd_parity_component()).collect();
    let clear = Zeroizing::new(
        (0..16)
            .map(|i| parts[0][i] ^ parts[1][i] ^ parts[2][i])
            .collect::<Vec<u8>>(),
    );
    (parts, clear)
}

/// The PIN pad of one terminal (TDES).
pub struct PinPad {
    pub terminal_id: String,
    tmk: Arc<Cipher>,
    pik: Option<Cipher>,
    mak: Option<Cipher>,
    tdk: Option<Cipher>,
}

impl std::fmt::Debug for PinPad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinPad")
            .field("terminal_id", &self.terminal_id)
            .finish_non_exhaustive()
    }
}

impl PinPad {
    /// A PIN pad that knows `tmk` (an 8- or 16-byte TDES key).
    pub fn new(terminal_id: &str, tmk: &[u8]) -> Result<PinPad, String> {
        Ok(PinPad::with_tmk(terminal_id, Arc::new(tdes_or_des(tmk)?)))
    }

    /// A PIN pad sharing a TMK key schedule with others (fleets of terminals).
    pub fn with_tmk(terminal_id: &str, tmk: Arc<Cipher>) -> PinPad {
        PinPad {
            terminal_id: terminal_id.into(),
            tmk,
            pik: None,
            mak: None,
            tdk: None,
        }
    }

    /// A sign-in request for this terminal with TDK (UNIONPAY_004).
    pub fn sign_in_request(&self) -> pb::SignInRequest {
        pb::SignInRequest {
            terminal_id: self.terminal_id.clone(),
            include_tdk: true,
            ..Default::default()
        }
    }

    /// Decrypts field 62 under the TMK and checks every check value, as a
    /// UnionPay terminal does (`layout` is the response's `Field62Layout`).
    pub fn load_field62(&mut self, field62: &[u8], layout: i32) -> Result<(), String> {
        let l =
            pb::Field62Layout::try_from(layout).map_err(|_| format!("unknown layout {layout}"))?;
        // (key length, slot length) of PIK, MAK[, TDK]
        let slots: &[(usize, usize)] = match l {
            pb::Field62Layout::Unionpay001 => &[(8, 8), (8, 8)],
            pb::Field62Layout::Unionpay003 => &[(16, 16), (8, 16)],
            pb::Field62Layout::Unionpay004 => &[(16, 16), (8, 16), (16, 16)],
            pb::Field62Layout::DoubleMak if field62.len() == 60 => &[(16, 16), (16, 16), (16, 16)],
            pb::Field62Layout::DoubleMak => &[(16, 16), (16, 16)],
            other => {
                return Err(format!(
                    "this PIN pad is TDES; layout {other:?} is not one it speaks"
                ))
            }
        };
        let mut pos = 0;
        let mut keys = Vec::new();
        for &(klen, slot) in slots {
            let ct = field62
                .get(pos..pos + klen)
                .ok_or("field 62 is too short")?;
            let pad = field62
                .get(pos + klen..pos + slot)
                .ok_or("field 62 is too short")?;
            if pad.iter().any(|b| *b != 0) {
                return Err("field 62: the single-length MAK slot is not zero-padded".into());
            }
            pos += slot;
            let mut key = Zeroizing::new(ct.to_vec());
            self.tmk.ecb_decrypt(&mut key).map_err(|e| e.to_string())?;
            let cv = field62.get(pos..pos + 4).ok_or("field 62 is too short")?;
            pos += 4;
            let c = tdes_or_des(&key)?;
            if kcv::encrypt_zeros(&c)[..4] != *cv {
                return Err("field 62: a check value does not match its key (wrong TMK?)".into());
            }
            keys.push(c);
        }
        if pos != field62.len() {
            return Err(format!(
                "field 62 has {} bytes; the layout uses {pos}",
                field62.len()
            ));
        }
        let mut it = keys.into_iter();
        self.pik = it.next();
        self.mak = it.next();
        self.tdk = it.next();
        Ok(())
    }

    /// An ISO 9564 format 0 PIN block under the PIK, as the PIN pad sends it.
    pub fn pin_block(&self, pin: &str, pan: &str) -> Result<Vec<u8>, String> {
        let pik = self.pik.as_ref().ok_or("the terminal has not signed in")?;
        let pin = Pin::parse(pin).map_err(|e| e.to_string())?;
        let pan = Pan::parse(pan).map_err(|e| e.to_string())?;
        pinblock::encipher(PinBlockFormat::Iso0, pik, &pin, Some(&pan)).map_err(|e| e.to_string())
    }

    /// The UnionPay POS ECB MAC of a message under the MAK (8 ASCII hex bytes).
    pub fn mac(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let mak = self.mak.as_ref().ok_or("the terminal has not signed in")?;
        Ok(mac::unionpay_ecb(mak, message))
    }

    /// Checks a response MAC (UnionPay ECB) in constant time.
    pub fn check_mac(&self, message: &[u8], mac: &[u8]) -> bool {
        self.mac(message)
            .map(|m| bool::from(m.as_slice().ct_eq(mac)))
            .unwrap_or(false)
    }

    /// Track data encrypted under the TDK (ECB, zero-padded to 8 bytes).
    pub fn encrypt_track(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        let tdk = self
            .tdk
            .as_ref()
            .ok_or("no TDK: sign in with include_tdk")?;
        let mut d = data.to_vec();
        d.resize(data.len().div_ceil(8) * 8, 0);
        tdk.ecb_encrypt(&mut d).map_err(|e| e.to_string())?;
        Ok(d)
    }
}

/// The card network's side: it knows the ZPK and ZAK it delivered.
pub struct NetworkPeer {
    pub zpk_alias: String,
    pub zak_alias: String,
    zpk: Cipher,
    zak: mac::RetailMac,
}

impl NetworkPeer {
    pub fn new(
        zpk_alias: &str,
        zak_alias: &str,
        zpk: &[u8],
        zak: &[u8],
    ) -> Result<NetworkPeer, String> {
        Ok(NetworkPeer {
            zpk_alias: zpk_alias.into(),
            zak_alias: zak_alias.into(),
            zpk: tdes_or_des(zpk)?,
            zak: mac::RetailMac::new(zak).map_err(|e| e.to_string())?,
        })
    }

    /// The PIN inside an ISO 0 block under the ZPK.
    pub fn pin(&self, block: &[u8], pan: &str) -> Result<String, String> {
        let pan = Pan::parse(pan).map_err(|e| e.to_string())?;
        let pin = pinblock::decipher(PinBlockFormat::Iso0, &self.zpk, block, Some(&pan))
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(pin.expose_digits()).into_owned())
    }

    /// The X9.19 (ISO 9797-1 alg. 3) MAC under the ZAK.
    pub fn mac(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        Ok(self.zak.compute(message, mac::Padding::Method1).to_vec())
    }

    /// Checks a network MAC (X9.19) in constant time.
    pub fn check_mac(&self, message: &[u8], m: &[u8]) -> bool {
        bool::from(self.zak.compute(message, mac::Padding::Method1)[..].ct_eq(m))
    }
}
