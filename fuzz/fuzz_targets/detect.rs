//! Any first bytes through protocol detection: no panic, and HTTP is only reported for a
//! prefix of a known method or of the HTTP/2 preface.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outrider_http::{Detected, detect};

const STARTS: [&[u8]; 10] = [
    b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"TRACE ",
    b"CONNECT ", b"PRI * HTTP/2",
];

fuzz_target!(|data: &[u8]| {
    if detect(data) == Detected::Http {
        assert!(STARTS.iter().any(|s| {
            let n = s.len().min(data.len());
            n > 0 && data[..n] == s[..n]
        }));
    }
});
