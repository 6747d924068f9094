//! A bounded, deterministic stand-in for the fuzzer that runs on stable in every CI run:
//! thousands of mutations of the example plans must each give a verdict, never a panic.
//! (The coverage-guided target is `fuzz/fuzz_targets/plan_check.rs`; see the README.)

mod common;

use chrono::Utc;

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const FRAGMENTS: &[&str] = &[
    "\"",
    "[",
    "]",
    "{",
    "}",
    "=",
    "\n",
    "#",
    "'''",
    "\"\"\"",
    "\\u{0}",
    "1e999",
    "-0",
    "nan",
    "inf",
    "2026-13-45T99:99:99Z",
    "[[eval.case]]",
    "[plan]",
    "a.b.c = 1",
    "é",
    "\u{202e}",
    "0x7fffffffffffffff",
    "99999999999999999999",
    "true",
    "[]",
    "{ local = 0 }",
    "sk-",
    "-----BEGIN",
    "  ",
    "\t",
    "\r\n",
];

#[test]
fn mutated_plans_never_panic() {
    let plans: Vec<String> = std::fs::read_dir(common::repo_root().join("plans"))
        .expect("plans dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| std::fs::read_to_string(p).expect("read plan"))
        .collect();
    let now = Utc::now();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut refused = 0;
    for i in 0..20_000 {
        let mut text = plans[i % plans.len()].clone().into_bytes();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(text.len());
            match rng.below(4) {
                0 => {
                    let end = (at + rng.below(40)).min(text.len());
                    text.drain(at..end);
                }
                1 => {
                    let frag = FRAGMENTS[rng.below(FRAGMENTS.len())].as_bytes();
                    text.splice(at..at, frag.iter().copied());
                }
                2 => {
                    if let Some(b) = text.get_mut(at) {
                        *b = (rng.next() & 0xff) as u8;
                    }
                }
                _ => {
                    let start = rng.below(text.len());
                    let end = (start + rng.below(80)).min(text.len());
                    let copy: Vec<u8> = text[start..end].to_vec();
                    text.splice(at..at, copy);
                }
            }
        }
        let checked = match String::from_utf8(text) {
            Ok(s) => gpuctl::plan::check_str("mutant.toml", &s, now),
            Err(_) => continue,
        };
        if checked.plan.is_none() {
            refused += 1;
            assert!(
                checked.errors().next().is_some(),
                "a plan without a verdict must say why"
            );
        }
        for p in &checked.problems {
            assert!(p.line >= 1 && p.column >= 1, "unlocated problem: {p}");
        }
    }
    assert!(
        refused > 1000,
        "mutations should mostly be refused, got {refused}"
    );
}
