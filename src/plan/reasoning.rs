//! The lesson's test of a route decision: "a strong answer names constraints instead of
//! enthusiasm". `plan check` warns (never refuses) when `why` names no constraint.

/// Words that name a constraint a route decision can rest on.
const CONSTRAINTS: &[&str] = &[
    "vram",
    "memory",
    "oom",
    "gb",
    "budget",
    "cost",
    "price",
    "cheap",
    "$",
    "usd",
    "dollar",
    "privacy",
    "private",
    "data",
    "secret",
    "ssh",
    "availab",
    "capacity",
    "quota",
    "stock",
    "time",
    "hour",
    "minute",
    "deadline",
    "stop",
    "latency",
    "throughput",
    "serving",
    "serve",
    "vllm",
    "sglang",
    "disk",
    "cuda",
    "gpu",
    "cpu",
    "laptop",
    "offline",
    "network",
    "port",
    "reproduc",
    "7b",
    "13b",
    "context",
    "batch",
];

/// Words of enthusiasm that do not decide anything by themselves.
const ENTHUSIASM: &[&str] = &[
    "faster", "better", "best", "cool", "easier", "powerful", "modern", "nicer", "quicker",
];

/// A warning when `why` names no constraint; `None` when it does.
pub fn judge_why(why: &str) -> Option<String> {
    let lower = why.to_lowercase();
    if CONSTRAINTS.iter().any(|c| lower.contains(c)) {
        return None;
    }
    let enthusiastic: Vec<&str> = ENTHUSIASM
        .iter()
        .copied()
        .filter(|w| lower.contains(w))
        .collect();
    Some(if enthusiastic.is_empty() {
        "names no constraint".to_string()
    } else {
        format!(
            "only says it is {} and names no constraint",
            enthusiastic.join("/")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::judge_why;

    #[test]
    fn enthusiasm_is_not_a_reason() {
        assert!(judge_why("because it is faster").is_some_and(|w| w.contains("faster")));
        assert!(judge_why("I need 24 GB of VRAM and SSH for vLLM").is_none());
        assert!(judge_why("it's better").is_some());
    }
}
