//! Fuzz target: `poshsm::fuzzing::core_request` — every request type through the core.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    poshsm::fuzzing::core_request(data);
});
