#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| moor::fuzzing::rbd_json(data));
