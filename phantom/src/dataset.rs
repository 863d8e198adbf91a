//! Reproducible datasets: N studies from one seed, split into train,
//! validation and test, with every study of the held-out vendor style in a
//! separate test split for cross-vendor evaluation.

use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;

use crate::findings::Prevalence;
use crate::study::{PhantomError, StudySpec, generate};
use crate::vendor::Vendor;

#[derive(Debug, Clone, Serialize)]
pub struct DatasetEntry {
    pub dir: String,
    pub seed: u64,
    pub split: &'static str,
    pub vendor: Vendor,
    pub region: crate::levels::Region,
    pub findings: usize,
    pub slices: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub synthetic: bool,
    pub seed: u64,
    pub count: usize,
    pub held_out_vendor: Vendor,
    pub studies: Vec<DatasetEntry>,
}

/// Split of study `i`: the held-out vendor goes to its own test split; the
/// rest 80/10/10 by index.
pub fn split_of(i: usize, vendor: Vendor, held_out: Vendor) -> &'static str {
    if vendor == held_out {
        "test_heldout_vendor"
    } else {
        match i % 10 {
            8 => "validation",
            9 => "test",
            _ => "train",
        }
    }
}

pub fn study_seed(dataset_seed: u64, i: usize) -> u64 {
    dataset_seed.wrapping_mul(1_000_003).wrapping_add(i as u64)
}

pub fn generate_dataset(
    count: usize,
    seed: u64,
    out: &Path,
    held_out: Vendor,
    prevalence: &Prevalence,
) -> Result<Manifest, PhantomError> {
    let studies: Vec<DatasetEntry> = (0..count)
        .into_par_iter()
        .map(|i| {
            let s = study_seed(seed, i);
            let vendor = Vendor::ALL[i % Vendor::ALL.len()];
            let dir = format!("study_{i:05}");
            let spec = StudySpec {
                seed: s,
                vendor: Some(vendor),
                prevalence: prevalence.clone(),
                ..Default::default()
            };
            let truth = generate(&spec, &out.join(&dir))?;
            Ok(DatasetEntry {
                dir,
                seed: s,
                split: split_of(i, vendor, held_out),
                vendor,
                region: truth.region,
                findings: truth.findings.len(),
                slices: truth.series.iter().map(|s| s.slices).sum(),
            })
        })
        .collect::<Result<_, PhantomError>>()?;
    let manifest = Manifest {
        synthetic: true,
        seed,
        count,
        held_out_vendor: held_out,
        studies,
    };
    let path = out.join("manifest.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&manifest).expect("manifest serializes"),
    )
    .map_err(|source| PhantomError::Write { path, source })?;
    Ok(manifest)
}
