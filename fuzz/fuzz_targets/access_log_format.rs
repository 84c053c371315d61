//! Any text as an access-log format (`logging.accessLog.file.format.text`): parsing must never
//! panic, and a format that parses must render a record without panicking, headers and all.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use outrider_accesslog::{Format, Record};

fuzz_target!(|data: &[u8]| {
    let Ok(pattern) = std::str::from_utf8(data) else { return };
    let Ok(format) = Format::text(pattern) else { return };
    let mut headers = http::HeaderMap::new();
    headers.insert("user-agent", http::HeaderValue::from_static("fuzz"));
    headers.insert("x-request-id", http::HeaderValue::from_static("abc"));
    let mut rec = Record::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000), &headers);
    rec.method = Some("GET");
    rec.path = Some("/p?q=1");
    rec.authority = Some("svc.local");
    rec.protocol = Some("HTTP/1.1");
    rec.response_code = 200;
    rec.response_headers = Some(&headers);
    rec.duration = Duration::from_millis(3);
    rec.upstream_host = Some(([127, 0, 0, 1], 8080).into());
    let mut out = String::new();
    format.write(&rec, &mut out);
});
