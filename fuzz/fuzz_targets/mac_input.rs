//! Fuzz target: `poshsm::fuzzing::mac_input` on arbitrary bytes (must never panic).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    poshsm::fuzzing::mac_input(data);
});
