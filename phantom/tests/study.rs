//! Phantom studies: determinism, geometry, and that each finding changes
//! the pixels where its label says, with the contrast real MRI shows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use spineagent_phantom::findings::Finding;
use spineagent_phantom::levels::{Region, disc_index};
use spineagent_phantom::vendor::Vendor;
use spineagent_phantom::{StudySpec, StudyTruth, generate};

fn spec(seed: u64, findings: &[&str]) -> StudySpec {
    StudySpec {
        seed,
        region: Some(Region::Lumbar),
        vendor: Some(Vendor::Siemens),
        field_t: Some(1.5),
        findings: Some(findings.iter().map(|f| f.parse::<Finding>().unwrap()).collect()),
        dixon: Some(false),
        contrast: Some(false),
        // Ghosts copy changes across the image; off where pixels are compared.
        ghosting: Some(false),
        ..Default::default()
    }
}

fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Stored pixel values of one slice.
fn pixels(study: &Path, file: &str) -> Vec<u16> {
    let obj = dicom_object::open_file(study.join(file)).unwrap();
    let bytes = obj.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap().to_vec();
    bytes.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()
}

/// A label volume (.npy, uint8, [slices, rows, cols]) and its shape.
fn npy(study: &Path, rel: &str) -> (Vec<u8>, [usize; 3]) {
    let b = std::fs::read(study.join(rel)).unwrap();
    assert_eq!(&b[..6], b"\x93NUMPY");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    let shape: Vec<usize> = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    (b[10 + hlen..].to_vec(), [shape[0], shape[1], shape[2]])
}

fn series<'a>(t: &'a StudyTruth, family: &str, plane: &str) -> &'a spineagent_phantom::study::SeriesTruth {
    t.series
        .iter()
        .find(|s| s.family == family && serde_json::to_value(s.plane).unwrap() == plane)
        .unwrap()
}

#[test]
fn same_seed_same_bytes() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let s = StudySpec {
        seed: 42,
        ..Default::default()
    };
    generate(&s, a.path()).unwrap();
    generate(&s, b.path()).unwrap();
    let (fa, fb) = (files(a.path()), files(b.path()));
    assert!(fa.len() > 20);
    assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
    for (k, v) in &fa {
        assert!(v == &fb[k], "{} differs between two runs of one seed", k.display());
    }
    // And another seed gives another study.
    let c = tempfile::tempdir().unwrap();
    generate(
        &StudySpec {
            seed: 43,
            ..Default::default()
        },
        c.path(),
    )
    .unwrap();
    assert_ne!(
        fa.get(Path::new("truth.json")),
        files(c.path()).get(Path::new("truth.json"))
    );
}

#[test]
fn slices_advance_along_the_normal_and_axials_cross_their_disc() {
    let dir = tempfile::tempdir().unwrap();
    let t = generate(&spec(7, &[]), dir.path()).unwrap();
    for s in t.series.iter().filter(|s| s.slices > 3) {
        let geo: Vec<([f64; 3], [f64; 6], f64)> = s
            .files
            .iter()
            .map(|f| {
                let o = dicom_object::open_file(dir.path().join(f)).unwrap();
                let p = o
                    .element(tags::IMAGE_POSITION_PATIENT)
                    .unwrap()
                    .to_multi_float64()
                    .unwrap();
                let r = o
                    .element(tags::IMAGE_ORIENTATION_PATIENT)
                    .unwrap()
                    .to_multi_float64()
                    .unwrap();
                let sp = o.element(tags::SPACING_BETWEEN_SLICES).unwrap().to_float64().unwrap();
                ([p[0], p[1], p[2]], r[..6].try_into().unwrap(), sp)
            })
            .collect();
        for w in geo.windows(2).zip(s.slice_discs.windows(2)) {
            let ((a, b), discs) = ((&w.0[0], &w.0[1]), w.1);
            if discs[0] != discs[1] {
                continue; // next axial block
            }
            let o = a.1;
            let n = [
                o[1] * o[5] - o[2] * o[4],
                o[2] * o[3] - o[0] * o[5],
                o[0] * o[4] - o[1] * o[3],
            ];
            let step: f64 = (0..3).map(|i| (b.0[i] - a.0[i]) * n[i]).sum();
            assert!(
                (step.abs() - a.2).abs() < 0.01,
                "series {} steps {step} not {}",
                s.series_number,
                a.2
            );
        }
    }
    // Every axial block's middle slice cuts its own disc.
    let ax = series(&t, "t2", "axial");
    let (anat, shape) = npy(dir.path(), ax.anatomy_labels.as_deref().unwrap());
    let (level, _) = npy(dir.path(), ax.level_labels.as_deref().unwrap());
    let per = shape[1] * shape[2];
    let mut blocks: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, d) in ax.slice_discs.iter().enumerate() {
        blocks.entry(d.clone().unwrap()).or_default().push(i);
    }
    assert_eq!(blocks.len(), 5, "one block per lumbar disc");
    for (disc, slices) in blocks {
        let mid = slices[slices.len() / 2];
        let d = disc_index(&disc).unwrap() as u8;
        let disc_pixels = (0..per)
            .filter(|&p| matches!(anat[mid * per + p], 7 | 8) && [d + 1, d + 2].contains(&level[mid * per + p]))
            .count();
        assert!(
            disc_pixels > 300,
            "{disc}: middle slice holds only {disc_pixels} pixels of its disc"
        );
    }
}

/// Mean stored value of `file` over pixels where `mask` holds.
fn mean_where(px: &[u16], mask: impl Fn(usize) -> bool) -> f64 {
    let v: Vec<f64> = (0..px.len()).filter(|&i| mask(i)).map(|i| px[i] as f64).collect();
    assert!(!v.is_empty(), "empty mask");
    v.iter().sum::<f64>() / v.len() as f64
}

struct Pair {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    with: PathBuf,
    without: PathBuf,
    truth: StudyTruth,
}

fn pair(seed: u64, finding: &str) -> Pair {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let truth = generate(&spec(seed, &[finding]), a.path()).unwrap();
    generate(&spec(seed, &[]), b.path()).unwrap();
    Pair {
        with: a.path().to_path_buf(),
        without: b.path().to_path_buf(),
        truth,
        _dirs: (a, b),
    }
}

/// Sagittal slice `k` of a family, with the lesion mask of that slice.
fn sag(p: &Pair, family: &str, k: usize) -> (Vec<u16>, Vec<u16>, Vec<u8>) {
    let s = series(&p.truth, family, "sagittal");
    let (lesion, shape) = npy(&p.with, s.lesion_labels.as_deref().unwrap());
    let per = shape[1] * shape[2];
    (
        pixels(&p.with, &s.files[k]),
        pixels(&p.without, &s.files[k]),
        lesion[k * per..(k + 1) * per].to_vec(),
    )
}

/// Pixels that changed lie within one pixel of the finding's label (the
/// lesion label covers every pixel a lesion reaches into; the one pixel is
/// for the coil-independent rounding of neighbours' shared edges).
fn changes_only_where_labelled(before: &[u16], after: &[u16], mask: &[u8], cols: usize, what: &str) {
    let near = |i: usize| {
        let (r, c) = ((i / cols) as i64, (i % cols) as i64);
        (-1..=1).any(|dr| {
            (-1..=1).any(|dc| {
                let (rr, cc) = (r + dr, c + dc);
                rr >= 0
                    && cc >= 0
                    && cc < cols as i64
                    && mask.get((rr * cols as i64 + cc) as usize).is_some_and(|m| *m != 0)
            })
        })
    };
    let changed: Vec<usize> = (0..before.len()).filter(|&i| before[i] != after[i]).collect();
    assert!(!changed.is_empty(), "{what}: the finding changed nothing");
    let stray = changed.iter().filter(|&&i| !near(i)).count();
    assert!(
        stray == 0,
        "{what}: {stray} of {} changed pixels lie outside the label",
        changed.len()
    );
}

fn visible_slice(p: &Pair, family: &str) -> usize {
    let s = series(&p.truth, family, "sagittal");
    let v = p.truth.findings[0]
        .visible_in
        .iter()
        .find(|v| v.series_number == s.series_number)
        .unwrap();
    v.slices[v.slices.len() / 2]
}

#[test]
fn hemangioma_is_bright_on_t1_and_t2_and_only_where_labelled() {
    let p = pair(21, "hemangioma:L3:severe");
    let k = visible_slice(&p, "t1");
    for family in ["t1", "t2"] {
        let (with, without, mask) = sag(&p, family, k);
        let cols = (with.len() as f64).sqrt() as usize;
        changes_only_where_labelled(&without, &with, &mask, cols, family);
        let inside = |i: usize| mask[i] == 3;
        assert!(
            mean_where(&with, inside) > 1.15 * mean_where(&without, inside),
            "{family}: hemangioma not bright"
        );
    }
}

#[test]
fn marrow_edema_is_bright_on_stir_and_dark_on_t1() {
    let p = pair(22, "marrow_edema:L2");
    let k = visible_slice(&p, "stir");
    let (with, without, mask) = sag(&p, "stir", k);
    let inside = |i: usize| mask[i] == 2;
    assert!(
        mean_where(&with, inside) > 1.8 * mean_where(&without, inside),
        "edema not bright on STIR"
    );
    let (with, without, mask) = sag(&p, "t1", k);
    let inside = |i: usize| mask[i] == 2;
    assert!(
        mean_where(&with, inside) < 0.85 * mean_where(&without, inside),
        "edema not dark on T1"
    );
    let cols = (with.len() as f64).sqrt() as usize;
    changes_only_where_labelled(&without, &with, &mask, cols, "marrow edema");
}

#[test]
fn stir_suppresses_fat() {
    let dir = tempfile::tempdir().unwrap();
    let t = generate(&spec(23, &[]), dir.path()).unwrap();
    let (stir, t2) = (series(&t, "stir", "sagittal"), series(&t, "t2", "sagittal"));
    let (anat, shape) = npy(dir.path(), stir.anatomy_labels.as_deref().unwrap());
    let per = shape[1] * shape[2];
    let k = shape[0] / 2;
    let fat = |i: usize| anat[k * per + i] == 2;
    let csf = |i: usize| anat[k * per + i] == 9;
    let (s, t) = (pixels(dir.path(), &stir.files[k]), pixels(dir.path(), &t2.files[k]));
    assert!(
        mean_where(&s, fat) < 0.3 * mean_where(&t, fat),
        "fat not suppressed on STIR"
    );
    assert!(
        mean_where(&s, csf) > 3.0 * mean_where(&s, fat),
        "CSF should outshine fat on STIR"
    );
}

#[test]
fn foraminal_and_pars_findings_stay_off_the_midline() {
    // Both are lateral: visible on parasagittal slices and axials, never on
    // the midline sagittal slice, whose pixels they leave untouched.
    for finding in ["foraminal_stenosis:L5-S1:left:severe", "pars_defect:L5"] {
        let p = pair(24, finding);
        let s = series(&p.truth, "t2", "sagittal");
        let mid = s.slices / 2;
        let v = p.truth.findings[0]
            .visible_in
            .iter()
            .find(|v| v.series_number == s.series_number)
            .unwrap();
        assert!(
            !v.slices.is_empty() && !v.slices.contains(&mid),
            "{finding}: {:?}",
            v.slices
        );
        let (with, without, _) = sag(&p, "t2", mid);
        assert_eq!(with, without, "{finding} changed the midline slice");
        // Left findings sit on the patient's left (+x): the first slices.
        if finding.contains("left") {
            assert!(v.slices.iter().all(|&k| k < mid), "{finding}: {:?}", v.slices);
        }
    }
}

#[test]
fn herniation_is_in_the_canal_at_its_level_on_the_axial() {
    let p = pair(25, "herniation:L4-L5:right:moderate:protrusion");
    let ax = series(&p.truth, "t2", "axial");
    let v = p.truth.findings[0]
        .visible_in
        .iter()
        .find(|v| v.series_number == ax.series_number)
        .unwrap();
    assert!(
        v.slices.iter().all(|&k| ax.slice_discs[k].as_deref() == Some("L4-L5")),
        "{:?}",
        v.slices
    );
    // On the patient's right: DICOM -x, the left half of the image columns.
    let (lesion, shape) = npy(&p.with, ax.lesion_labels.as_deref().unwrap());
    let per = shape[1] * shape[2];
    let k = v.slices[0];
    let cols: Vec<usize> = (0..per)
        .filter(|&i| lesion[k * per + i] == 1)
        .map(|i| i % shape[2])
        .collect();
    let mean_col = cols.iter().sum::<usize>() as f64 / cols.len() as f64;
    assert!(
        mean_col < shape[2] as f64 / 2.0,
        "right herniation drawn on the left (column {mean_col})"
    );
}

#[test]
fn dataset_holds_out_one_vendor_and_is_reproducible() {
    use spineagent_phantom::dataset::{generate_dataset, split_of};
    let dir = tempfile::tempdir().unwrap();
    let m = generate_dataset(4, 9, dir.path(), Vendor::Canon, &Default::default()).unwrap();
    assert!(m.synthetic);
    assert_eq!(m.studies.len(), 4);
    for s in &m.studies {
        assert_eq!(s.split == "test_heldout_vendor", s.vendor == Vendor::Canon, "{s:?}");
        assert!(dir.path().join(&s.dir).join("truth.json").exists());
    }
    assert!(dir.path().join("manifest.json").exists());
    // Splits: 80/10/10 by index outside the held-out vendor.
    assert_eq!(split_of(0, Vendor::Ge, Vendor::Canon), "train");
    assert_eq!(split_of(8, Vendor::Ge, Vendor::Canon), "validation");
    assert_eq!(split_of(9, Vendor::Ge, Vendor::Canon), "test");
    assert_eq!(split_of(9, Vendor::Canon, Vendor::Canon), "test_heldout_vendor");
    // The same dataset seed makes the same first study.
    let again = tempfile::tempdir().unwrap();
    let m2 = generate_dataset(1, 9, again.path(), Vendor::Canon, &Default::default()).unwrap();
    assert_eq!(m2.studies[0].seed, m.studies[0].seed);
    assert_eq!(
        std::fs::read(dir.path().join("study_00000/truth.json")).unwrap(),
        std::fs::read(again.path().join("study_00000/truth.json")).unwrap()
    );
}

/// Every condition: the finding's label is where the truth says it is
/// visible, and (for findings that do not move the spine) pixels change
/// only where its label lies, in every sagittal and axial series.
#[test]
fn every_condition_changes_pixels_only_where_labelled() {
    use spineagent_phantom::findings::{ALL_CONDITIONS, Condition, candidate_levels, needs_side};
    for (n, &condition) in ALL_CONDITIONS.iter().enumerate() {
        let region = if matches!(condition, Condition::CordCompression | Condition::CordSignal) {
            Region::Cervical
        } else {
            Region::Lumbar
        };
        let levels = candidate_levels(condition, region);
        let level = levels[levels.len() / 2];
        let name = serde_json::to_value(condition).unwrap().as_str().unwrap().to_string();
        let finding = if needs_side(condition) {
            format!("{name}:{level}:right:severe")
        } else {
            format!("{name}:{level}:severe")
        };
        let mut s_with = spec(300 + n as u64, &[&finding]);
        let mut s_without = spec(300 + n as u64, &[]);
        s_with.region = Some(region);
        s_without.region = Some(region);
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let truth = generate(&s_with, a.path()).unwrap();
        generate(&s_without, b.path()).unwrap();
        let f = &truth.findings[0];
        assert!(!f.visible_in.is_empty(), "{finding}: visible nowhere");
        // Spondylolisthesis and disc height loss move the levels above.
        let moves_spine = matches!(condition, Condition::Spondylolisthesis | Condition::DiscHeightLoss);
        if moves_spine {
            continue;
        }
        let mut changed_somewhere = false;
        for s in truth.series.iter().filter(|s| s.lesion_labels.is_some()) {
            let (lesion, shape) = npy(a.path(), s.lesion_labels.as_deref().unwrap());
            let per = shape[1] * shape[2];
            for (k, file) in s.files.iter().enumerate() {
                let (with, without) = (pixels(a.path(), file), pixels(b.path(), file));
                if with == without {
                    continue;
                }
                changed_somewhere = true;
                changes_only_where_labelled(
                    &without,
                    &with,
                    &lesion[k * per..(k + 1) * per],
                    shape[2],
                    &format!("{finding} series {} slice {k}", s.series_number),
                );
            }
        }
        assert!(changed_somewhere, "{finding}: no pixel changed");
    }
}
