//! Fuzz the plan reader and every refusal rule: any bytes must give a verdict, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = chrono::Utc::now();
    if let Ok(text) = std::str::from_utf8(data) {
        let checked = gpuctl::plan::check_str("fuzz.toml", text, now);
        assert!(checked.plan.is_some() || checked.errors().next().is_some());
    }
    let _ = gpuctl::plan::Source::from_bytes("fuzz.toml".into(), data.to_vec());
});
