//! CUDA preprocessing throughput against the GPU's memory-bandwidth bound,
//! next to the CPU path (scripts/gpu-check runs it). Prints SKIPPED and the
//! reason where no GPU is usable.

use std::time::Instant;

use spineagent_kernels::cpu::preprocess;
use spineagent_kernels::{PreprocessSpec, Slice};

fn main() {
    let spec = PreprocessSpec::default();
    let (rows, cols, n) = (512usize, 512usize, 64usize);
    let data: Vec<Vec<i32>> = (0..n)
        .map(|k| (0..rows * cols).map(|i| ((i * 7 + k * 13) % 4096) as i32).collect())
        .collect();
    let slices: Vec<Slice> = data
        .iter()
        .map(|v| Slice {
            rows,
            cols,
            values: v,
            invert: false,
        })
        .collect();
    let started = Instant::now();
    let cpu = preprocess(&slices, &spec).expect("cpu");
    let cpu_s = started.elapsed().as_secs_f64();
    println!(
        "cpu: {n} slices {rows}x{cols} in {cpu_s:.4} s = {:.0} slices/s",
        n as f64 / cpu_s
    );
    #[cfg(feature = "cuda")]
    {
        use spineagent_kernels::cuda::{CudaPreprocessor, available};
        if let Err(why) = available() {
            println!("cuda: SKIPPED ({why})");
            return;
        }
        let gpu = CudaPreprocessor::new(0).expect("GPU initialises");
        let out = gpu.preprocess(&slices, &spec).expect("cuda");
        let diff = cpu.iter().zip(&out).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!("cuda on {}: max abs diff vs cpu {diff:.2e}", gpu.device_name);
        // Warm, then time on-device work (upload included: it is part of the job).
        for _ in 0..3 {
            gpu.preprocess_on_device(&slices, &spec).expect("cuda");
        }
        let reps = 20;
        let started = Instant::now();
        for _ in 0..reps {
            let t = gpu.preprocess_on_device(&slices, &spec).expect("cuda");
            std::hint::black_box(&t);
        }
        gpu.synchronize().expect("sync");
        let s = started.elapsed().as_secs_f64() / reps as f64;
        // Bytes each slice must move at least: its values in, the tensor out.
        let bytes = n as f64 * (rows * cols * 4 + 3 * spec.crop * spec.crop * 4) as f64;
        let bound = gpu.memory_bandwidth_gbps().unwrap_or(f64::NAN);
        println!(
            "cuda: {:.0} slices/s, {:.1} GB/s of minimum traffic; device bandwidth bound {bound:.0} GB/s ({:.1} %)",
            n as f64 / s,
            bytes / s / 1e9,
            100.0 * bytes / s / 1e9 / bound
        );
    }
}
