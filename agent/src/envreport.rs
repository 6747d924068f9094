//! `environment_report.txt`: what the session ran on. Every probe is best effort: a
//! missing file or tool is written as "unknown", never an error that stops the report.

use std::fmt::Write;
use std::path::Path;
use std::process::Command;

use crate::gpu;

pub fn report(work_dir: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# environment report");
    let _ = writeln!(out, "generated_at: {}", chrono::Utc::now().to_rfc3339());
    let _ = writeln!(out, "agent: gpuctl-agent {}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(
        out,
        "hostname: {}",
        read_trim("/proc/sys/kernel/hostname").unwrap_or_else(unknown)
    );
    let _ = writeln!(out, "os: {}", os_name().unwrap_or_else(unknown));
    let _ = writeln!(
        out,
        "kernel: {}",
        read_trim("/proc/sys/kernel/osrelease").unwrap_or_else(unknown)
    );
    let _ = writeln!(out, "arch: {}", std::env::consts::ARCH);
    let _ = writeln!(
        out,
        "glibc: {}",
        command_line("getconf", &["GNU_LIBC_VERSION"]).unwrap_or_else(unknown)
    );
    let _ = writeln!(out, "cpu: {}", cpu_model().unwrap_or_else(unknown));
    let _ = writeln!(
        out,
        "cpu_threads: {}",
        std::thread::available_parallelism()
            .map(|n| n.get().to_string())
            .unwrap_or_else(|_| unknown())
    );
    let levels: Vec<&str> = crate::engine::KernelLevel::ALL
        .into_iter()
        .filter(|l| l.supported())
        .map(|l| l.name())
        .collect();
    let _ = writeln!(
        out,
        "cpu_kernels: {} (this CPU runs: {})",
        crate::engine::KernelLevel::detect().name(),
        levels.join(", ")
    );
    let (total, available) = memory_kib();
    let _ = writeln!(
        out,
        "memory_total: {}",
        total.map(gib).unwrap_or_else(unknown)
    );
    let _ = writeln!(
        out,
        "memory_available: {}",
        available.map(gib).unwrap_or_else(unknown)
    );
    let _ = writeln!(
        out,
        "disk ({}): {}",
        work_dir.display(),
        disk(work_dir).unwrap_or_else(unknown)
    );
    let _ = writeln!(
        out,
        "python: {}",
        command_line("python3", &["--version"]).unwrap_or_else(|| "not found".into())
    );
    out.push_str(&gpu::report());
    out
}

fn unknown() -> String {
    "unknown".to_string()
}

fn gib(kib: u64) -> String {
    format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0))
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn os_name() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
}

fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let model = text.lines().find_map(|l| l.strip_prefix("model name"))?;
    let flags = text
        .lines()
        .find_map(|l| l.strip_prefix("flags"))
        .unwrap_or_default();
    let simd: Vec<&str> = ["avx2", "fma", "avx512f", "avx512_vnni", "amx_tile"]
        .into_iter()
        .filter(|f| flags.split_whitespace().any(|x| x == *f))
        .collect();
    Some(format!(
        "{} [{}]",
        model.trim_start_matches([' ', '\t', ':']),
        simd.join(" ")
    ))
}

fn memory_kib() -> (Option<u64>, Option<u64>) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| {
                v.trim_start_matches(':')
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
    };
    (field("MemTotal"), field("MemAvailable"))
}

/// Free and total space of the filesystem holding `dir` (POSIX `df -Pk`).
fn disk(dir: &Path) -> Option<String> {
    let out = Command::new("df").arg("-Pk").arg(dir).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = text.lines().nth(1)?.split_whitespace().collect();
    let total: u64 = fields.get(1)?.parse().ok()?;
    let avail: u64 = fields.get(3)?.parse().ok()?;
    Some(format!("{} free of {}", gib(avail), gib(total)))
}

fn command_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(str::to_string)
}
