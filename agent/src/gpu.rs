//! GPUs through NVML. nvml-wrapper loads the NVIDIA library at run time, so on a machine
//! without a driver this says "no NVIDIA GPU visible" and the agent carries on.

use std::fmt::Write;

use nvml_wrapper::Nvml;

pub fn report() -> String {
    let mut out = String::from("\n# GPUs (NVML)\n");
    let nvml = match Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            let _ = writeln!(out, "gpus: no NVIDIA GPU visible ({e})");
            return out;
        }
    };
    let driver = nvml
        .sys_driver_version()
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let cuda = nvml
        .sys_cuda_driver_version()
        .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10))
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let count = nvml.device_count().unwrap_or(0);
    let _ = writeln!(out, "driver: {driver}\ncuda: {cuda}\ngpus: {count}");
    for i in 0..count {
        let Ok(dev) = nvml.device_by_index(i) else {
            let _ = writeln!(out, "gpu {i}: cannot be opened");
            continue;
        };
        let name = dev.name().unwrap_or_else(|_| "unknown".into());
        let uuid = dev.uuid().unwrap_or_else(|_| "unknown".into());
        let _ = writeln!(out, "gpu {i}: {name} ({uuid})");
        if let Ok(mem) = dev.memory_info() {
            let _ = writeln!(
                out,
                "gpu {i} memory: {} MiB used of {} MiB",
                mem.used / (1024 * 1024),
                mem.total / (1024 * 1024)
            );
        }
        if let Ok(util) = dev.utilization_rates() {
            let _ = writeln!(
                out,
                "gpu {i} utilization: {}% compute, {}% memory",
                util.gpu, util.memory
            );
        }
        if let Ok(mw) = dev.power_usage() {
            let _ = writeln!(out, "gpu {i} power: {:.1} W", f64::from(mw) / 1000.0);
        }
    }
    out
}

/// Every compute process on every GPU (for the stop's check that the session freed them).
pub fn processes() -> gpuctl_protocol::GpuProcesses {
    use gpuctl_protocol::{GpuProcess, GpuProcesses};
    use nvml_wrapper::enums::device::UsedGpuMemory;
    let nvml = match Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            return GpuProcesses {
                gpus: None,
                processes: Vec::new(),
                note: Some(format!("no NVIDIA GPU visible ({e})")),
            }
        }
    };
    let count = nvml.device_count().unwrap_or(0);
    let mut processes = Vec::new();
    let mut note = None;
    for i in 0..count {
        let Ok(dev) = nvml.device_by_index(i) else {
            continue;
        };
        let uuid = dev.uuid().unwrap_or_default();
        match dev.running_compute_processes() {
            Ok(list) => processes.extend(list.into_iter().map(|p| GpuProcess {
                gpu: i,
                uuid: uuid.clone(),
                pid: p.pid,
                used_memory_mib: match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => Some(b / (1024 * 1024)),
                    UsedGpuMemory::Unavailable => None,
                },
            })),
            Err(e) => note = Some(format!("gpu {i}: cannot list compute processes ({e})")),
        }
    }
    GpuProcesses {
        gpus: Some(count),
        processes,
        note,
    }
}
