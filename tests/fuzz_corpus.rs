//! Replays every file of the fuzz corpora (fuzz/corpus/<target>/) through the
//! same entry points the cargo-fuzz targets use, so stable CI exercises them.

fn replay(target: &str, f: fn(&[u8])) {
    let dir = format!("{}/fuzz/corpus/{target}", env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus dir") {
        let path = entry.unwrap().path();
        if path.is_file() {
            f(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    assert!(n > 0, "corpus {dir} is empty");
}

#[test]
fn the_keyblock_corpus_replays_without_a_panic() {
    replay("keyblock", poshsm::fuzzing::keyblock);
}

#[test]
fn the_pinblock_corpus_replays_without_a_panic() {
    replay("pinblock", poshsm::fuzzing::pinblock);
}

#[test]
fn the_mac_input_corpus_replays_without_a_panic() {
    replay("mac_input", poshsm::fuzzing::mac_input);
}

#[test]
fn the_config_corpus_replays_without_a_panic() {
    replay("config", poshsm::fuzzing::config);
}

#[test]
fn the_payshield_frame_corpus_replays_without_a_panic() {
    replay("payshield_frame", poshsm::fuzzing::payshield_frame);
}

#[test]
fn the_core_request_corpus_replays_without_a_panic() {
    replay("core_request", poshsm::fuzzing::core_request);
}
