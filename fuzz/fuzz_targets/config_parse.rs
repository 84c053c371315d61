//! Any bytes as a JSON or YAML spec: loading, validation and compilation must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let sel = outrider_config::Selector { mesh: None, node: Some("front".into()), gateway: None };
    let name = if text.trim_start().starts_with(['{', '[']) { "fuzz.json" } else { "fuzz.yaml" };
    let _ = outrider_config::build_from_str(name, text, &sel);
});
