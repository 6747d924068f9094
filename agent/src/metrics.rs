//! `gpu_metrics.csv`: NVML samples every few seconds while serving, one row per GPU.
//! Written only where a GPU exists.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::Nvml;

pub const HEADER: &str = "time,gpu,uuid,name,memory_used_mib,memory_total_mib,utilization_gpu_pct,utilization_memory_pct,power_w,temperature_c\n";

/// Sample until `stop` is set; then take one last sample (the final NVML sample of the session).
pub fn spawn_sampler(
    path: PathBuf,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    let nvml = Nvml::init().ok()?;
    let count = nvml.device_count().ok().filter(|c| *c > 0)?;
    std::thread::Builder::new()
        .name("gpu-metrics".into())
        .spawn(move || {
            let Ok(mut file) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
            else {
                return;
            };
            let _ = file.write_all(HEADER.as_bytes());
            loop {
                let last = stop.load(Ordering::SeqCst);
                let _ = file.write_all(sample(&nvml, count).as_bytes());
                let _ = file.flush();
                if last {
                    break;
                }
                // Sleep in small steps so a stop is noticed quickly.
                let mut slept = Duration::ZERO;
                while slept < every && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                    slept += Duration::from_millis(100);
                }
            }
        })
        .ok()
}

fn sample(nvml: &Nvml, count: u32) -> String {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut out = String::new();
    for i in 0..count {
        let Ok(dev) = nvml.device_by_index(i) else {
            continue;
        };
        let mem = dev.memory_info().ok();
        let util = dev.utilization_rates().ok();
        let field = |v: Option<String>| v.unwrap_or_default();
        out.push_str(&format!(
            "{now},{i},{},{},{},{},{},{},{},{}\n",
            field(dev.uuid().ok()),
            field(dev.name().ok()).replace(',', " "),
            field(mem.as_ref().map(|m| (m.used / (1024 * 1024)).to_string())),
            field(mem.as_ref().map(|m| (m.total / (1024 * 1024)).to_string())),
            field(util.as_ref().map(|u| u.gpu.to_string())),
            field(util.as_ref().map(|u| u.memory.to_string())),
            field(
                dev.power_usage()
                    .ok()
                    .map(|mw| format!("{:.1}", f64::from(mw) / 1000.0))
            ),
            field(
                dev.temperature(TemperatureSensor::Gpu)
                    .ok()
                    .map(|t| t.to_string())
            ),
        ));
    }
    out
}
