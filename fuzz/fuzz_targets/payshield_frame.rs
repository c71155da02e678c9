//! Fuzz target: `poshsm::fuzzing::payshield_frame` on arbitrary bytes (must never panic).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    poshsm::fuzzing::payshield_frame(data);
});
