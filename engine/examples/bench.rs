//! Benchmarks behind bench/engine.sh (not tests):
//!   bench preprocess FILE...            decode + preprocess every file, slices/s
//!   bench encoder BUNDLE_DIR MODEL N    batch 1 and 8 throughput, slices/s

use std::path::PathBuf;
use std::time::Instant;

use spineagent_engine::decode::decode_file;
use spineagent_engine::npy::ArrayF32;
use spineagent_engine::{Bundle, Model, Runtime, SessionOptions};
use spineagent_kernels::{PreprocessSpec, cpu::preprocess};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("preprocess") => {
            let files: Vec<PathBuf> = args[1..].iter().map(PathBuf::from).collect();
            let spec = PreprocessSpec::default();
            let mut best = f64::MAX;
            let mut slices = 0;
            for _ in 0..3 {
                let started = Instant::now();
                let decoded: Vec<_> = files.iter().flat_map(|f| decode_file(f).expect("decodes")).collect();
                let views: Vec<_> = decoded.iter().map(|d| d.as_slice()).collect();
                let out = preprocess(&views, &spec).expect("preprocesses");
                std::hint::black_box(&out);
                best = best.min(started.elapsed().as_secs_f64());
                slices = decoded.len();
            }
            println!(
                "{{\"slices\": {slices}, \"seconds\": {best:.4}, \"slices_per_s\": {:.1}}}",
                slices as f64 / best
            );
        }
        Some("encoder") => {
            let (dir, name, n): (PathBuf, &str, usize) = (args[1].clone().into(), &args[2], args[3].parse().unwrap());
            let threads: usize = std::env::var("THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(2);
            let bundle = Bundle::open(&dir).expect("bundle");
            let model = Model::load(
                Runtime::global().expect("runtime"),
                &bundle,
                name,
                &SessionOptions::with_threads(threads),
            )
            .expect("model");
            let dims: Vec<usize> = model.spec.inputs[0].shape[1..]
                .iter()
                .map(|d| match d {
                    spineagent_engine::bundle::Dim::Fixed(n) => *n as usize,
                    _ => panic!("only the batch axis may be dynamic"),
                })
                .collect();
            let per: usize = dims.iter().product();
            for batch in [1usize, 8] {
                let make = || {
                    let mut shape = vec![batch];
                    shape.extend(&dims);
                    ArrayF32 {
                        shape,
                        data: (0..batch * per).map(|i| ((i % 97) as f32) / 97.0).collect(),
                    }
                };
                model.run(vec![make()]).expect("warm-up");
                let runs = (n / batch).max(1);
                let started = Instant::now();
                for _ in 0..runs {
                    model.run(vec![make()]).expect("runs");
                }
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "{{\"batch\": {batch}, \"slices\": {}, \"seconds\": {secs:.4}, \"slices_per_s\": {:.2}}}",
                    runs * batch,
                    (runs * batch) as f64 / secs
                );
            }
        }
        _ => eprintln!("usage: bench preprocess FILE... | bench encoder BUNDLE_DIR MODEL N"),
    }
}
