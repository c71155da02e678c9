//! Property tests for `poshsm::crypto`: every encode/decode and encrypt/decrypt pair
//! round-trips, parity adjustment is idempotent, known algebraic identities between the
//! MACs hold, and decoders never panic on arbitrary input.

use poshsm::crypto::pinblock::{decode_iso4_pin_field, encode_iso4_pin_field};
use poshsm::crypto::*;
use proptest::prelude::*;

fn alg_strategy() -> impl Strategy<Value = Algorithm> {
    prop::sample::select(Algorithm::ALL.to_vec())
}

fn wide_alg_strategy() -> impl Strategy<Value = Algorithm> {
    prop::sample::select(vec![
        Algorithm::Aes128,
        Algorithm::Aes192,
        Algorithm::Aes256,
        Algorithm::Sm4,
    ])
}

/// An algorithm and a key of the right length.
fn keyed(algs: impl Strategy<Value = Algorithm>) -> impl Strategy<Value = (Algorithm, Vec<u8>)> {
    algs.prop_flat_map(|a| (Just(a), prop::collection::vec(any::<u8>(), a.key_len())))
}

fn pin_strategy() -> impl Strategy<Value = String> {
    "[0-9]{4,12}"
}

fn pan_strategy() -> impl Strategy<Value = String> {
    "[0-9]{12,19}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn iso0_round_trips(p in pin_strategy(), a in pan_strategy()) {
        let (pin, pan) = (Pin::parse(&p).unwrap(), Pan::parse(&a).unwrap());
        let block = encode_iso0(&pin, &pan);
        prop_assert_eq!(decode_iso0(&block, &pan).unwrap(), pin);
    }

    #[test]
    fn iso1_round_trips(p in pin_strategy()) {
        let pin = Pin::parse(&p).unwrap();
        let block = encode_iso1(&pin);
        prop_assert_eq!(decode_iso1(&block).unwrap(), pin);
    }

    #[test]
    fn iso3_round_trips(p in pin_strategy(), a in pan_strategy()) {
        let (pin, pan) = (Pin::parse(&p).unwrap(), Pan::parse(&a).unwrap());
        let block = encode_iso3(&pin, &pan);
        prop_assert_eq!(decode_iso3(&block, &pan).unwrap(), pin);
    }

    #[test]
    fn iso4_pin_field_round_trips(p in pin_strategy(), random in any::<[u8; 8]>()) {
        let pin = Pin::parse(&p).unwrap();
        let field = encode_iso4_pin_field(&pin, &random);
        prop_assert_eq!(&field[8..], &random[..]);
        prop_assert_eq!(decode_iso4_pin_field(&field).unwrap(), pin);
    }

    #[test]
    fn iso4_round_trips_under_aes_and_sm4(
        (alg, key) in keyed(wide_alg_strategy()),
        p in pin_strategy(),
        a in pan_strategy(),
    ) {
        let c = Cipher::new(alg, &key).unwrap();
        let (pin, pan) = (Pin::parse(&p).unwrap(), Pan::parse(&a).unwrap());
        let block = encipher_iso4(&c, &pin, &pan).unwrap();
        prop_assert_eq!(decipher_iso4(&c, &block, &pan).unwrap(), pin);
    }

    #[test]
    fn generic_encipher_decipher_round_trips(
        (alg, key) in keyed(alg_strategy()),
        format in prop::sample::select(vec![
            PinBlockFormat::Iso0, PinBlockFormat::Iso1, PinBlockFormat::Iso3, PinBlockFormat::Iso4,
        ]),
        p in pin_strategy(),
        a in pan_strategy(),
    ) {
        prop_assume!(format != PinBlockFormat::Iso4 || alg.block_len() == 16);
        let c = Cipher::new(alg, &key).unwrap();
        let (pin, pan) = (Pin::parse(&p).unwrap(), Pan::parse(&a).unwrap());
        let block = encipher(format, &c, &pin, Some(&pan)).unwrap();
        prop_assert_eq!(block.len(), alg.block_len());
        prop_assert_eq!(decipher(format, &c, &block, Some(&pan)).unwrap(), pin);
    }

    #[test]
    fn sm4_and_aes_form_is_the_8_byte_block_zero_padded(
        (alg, key) in keyed(wide_alg_strategy()),
        p in pin_strategy(),
        a in pan_strategy(),
    ) {
        let c = Cipher::new(alg, &key).unwrap();
        let (pin, pan) = (Pin::parse(&p).unwrap(), Pan::parse(&a).unwrap());
        let mut block = encipher(PinBlockFormat::Iso0, &c, &pin, Some(&pan)).unwrap();
        c.ecb_decrypt(&mut block).unwrap();
        prop_assert_eq!(&block[..8], &encode_iso0(&pin, &pan)[..]);
        prop_assert_eq!(&block[8..], &[0u8; 8][..]);
    }

    #[test]
    fn ecb_and_cbc_round_trip(
        (alg, key) in keyed(alg_strategy()),
        blocks in 0usize..6,
        seed in any::<[u8; 32]>(),
    ) {
        let c = Cipher::new(alg, &key).unwrap();
        let bs = c.block_len();
        let data: Vec<u8> = seed.iter().cycle().take(blocks * bs).copied().collect();
        let iv: Vec<u8> = seed.iter().rev().take(bs).copied().collect();

        let mut ecb = data.clone();
        c.ecb_encrypt(&mut ecb).unwrap();
        c.ecb_decrypt(&mut ecb).unwrap();
        prop_assert_eq!(&ecb, &data);

        let mut cbc = data.clone();
        c.cbc_encrypt(&iv, &mut cbc).unwrap();
        // CBC is chained single-block encryption.
        let mut chain = iv.clone();
        for (i, block) in data.chunks(bs).enumerate() {
            let mut x: Vec<u8> = block.iter().zip(&chain).map(|(a, b)| a ^ b).collect();
            c.encrypt_block(&mut x).unwrap();
            prop_assert_eq!(&cbc[i * bs..(i + 1) * bs], &x[..]);
            chain = x;
        }
        c.cbc_decrypt(&iv, &mut cbc).unwrap();
        prop_assert_eq!(&cbc, &data);
    }

    #[test]
    fn parity_adjustment_is_idempotent_and_touches_only_the_low_bit(
        key in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut once = key.clone();
        adjust_odd_parity(&mut once);
        prop_assert!(has_odd_parity(&once));
        let mut twice = once.clone();
        adjust_odd_parity(&mut twice);
        prop_assert_eq!(&once, &twice);
        for (a, b) in key.iter().zip(&once) {
            prop_assert_eq!(a & 0xFE, b & 0xFE);
        }
        prop_assert_eq!(has_odd_parity(&key), key == once);
    }

    #[test]
    fn x9_19_with_equal_halves_is_x9_9(
        k in any::<[u8; 8]>(),
        data in prop::collection::vec(any::<u8>(), 0..64),
        padding in prop::sample::select(vec![Padding::Method1, Padding::Method2, Padding::Method3]),
    ) {
        // E_K1(D_K1(E_K1(x))) = E_K1(x): a retail MAC under K1‖K1 is the DES CBC-MAC.
        let des = Cipher::new(Algorithm::Des, &k).unwrap();
        let double = [k, k].concat();
        let triple = [k, k, k].concat();
        let x9_9 = iso9797_alg1(&des, &data, padding);
        prop_assert_eq!(&iso9797_alg3(&double, &data, padding).unwrap()[..], &x9_9[..]);
        prop_assert_eq!(&iso9797_alg3(&triple, &data, padding).unwrap()[..], &x9_9[..]);
        let tdes = Cipher::new(Algorithm::Tdes2, &double).unwrap();
        prop_assert_eq!(iso9797_alg1(&tdes, &data, padding), x9_9);
    }

    #[test]
    fn unionpay_ecb_mac_is_upper_case_hex(
        (alg, key) in keyed(alg_strategy()),
        data in prop::collection::vec(any::<u8>(), 0..80),
    ) {
        let c = Cipher::new(alg, &key).unwrap();
        let mac = unionpay_ecb(&c, &data);
        prop_assert_eq!(mac.len(), if alg.block_len() == 8 { 8 } else { 16 });
        prop_assert!(mac.iter().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)));
        let o = unionpay_ecb_block(&c, &data);
        let expected = hex::encode_upper(&o[..mac.len() / 2]).into_bytes();
        prop_assert_eq!(mac, expected);
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_input(
        block in any::<[u8; 8]>(),
        field in any::<[u8; 16]>(),
        bytes in prop::collection::vec(any::<u8>(), 0..40),
        a in pan_strategy(),
        (alg, key) in keyed(alg_strategy()),
    ) {
        let pan = Pan::parse(&a).unwrap();
        let _ = decode_iso0(&block, &pan);
        let _ = decode_iso1(&block);
        let _ = decode_iso3(&block, &pan);
        let _ = decode_iso4_pin_field(&field);
        let c = Cipher::new(alg, &key).unwrap();
        for format in [PinBlockFormat::Iso0, PinBlockFormat::Iso1, PinBlockFormat::Iso3, PinBlockFormat::Iso4] {
            let _ = decipher(format, &c, &bytes, Some(&pan));
            let _ = decipher(format, &c, &bytes, None);
        }
        let _ = decipher_iso4(&c, &bytes, &pan);
        let _ = iso9797_alg3(&bytes, &bytes, Padding::Method2);
        let mut buf = bytes.clone();
        let _ = c.ecb_encrypt(&mut buf);
        let _ = c.cbc_decrypt(&bytes, &mut buf);
    }

    #[test]
    fn parsers_never_panic(s in "\\PC{0,24}") {
        let _ = Pin::parse(&s);
        let _ = Pan::parse(&s);
    }
}
