//! Vendor naming conventions → family and region. Each row is a tag set as
//! the vendor's console writes it (descriptions, ScanningSequence, ImageType,
//! TR/TE/TI), so a change to the rule table that breaks a vendor shows here.

use super::*;

struct Row {
    vendor: &'static str,
    description: &'static str,
    sequence_name: &'static str,
    scanning: &'static [&'static str],
    image_type: &'static [&'static str],
    te: f64,
    tr: f64,
    ti: Option<f64>,
    contrast: bool,
    body_part: &'static str,
    family: Family,
    region: Region,
}

const fn row(vendor: &'static str, description: &'static str, te: f64, tr: f64, family: Family, region: Region) -> Row {
    Row {
        vendor,
        description,
        sequence_name: "",
        scanning: &["SE"],
        image_type: &["ORIGINAL", "PRIMARY", "M", "ND"],
        te,
        tr,
        ti: None,
        contrast: false,
        body_part: "",
        family,
        region,
    }
}

fn header(r: &Row) -> InstanceHeader {
    InstanceHeader {
        manufacturer: r.vendor.into(),
        series_description: r.description.into(),
        sequence_name: r.sequence_name.into(),
        scanning_sequence: r.scanning.iter().map(|s| s.to_string()).collect(),
        image_type: r.image_type.iter().map(|s| s.to_string()).collect(),
        echo_time_ms: Some(r.te),
        repetition_time_ms: Some(r.tr),
        inversion_time_ms: r.ti,
        contrast_agent: r.contrast,
        body_part_examined: r.body_part.into(),
        ..Default::default()
    }
}

fn rows() -> Vec<Row> {
    use Family::*;
    use Region::*;
    vec![
        // Siemens
        Row {
            sequence_name: "*tse2d1_3",
            body_part: "LSPINE",
            ..row("SIEMENS", "t2_tse_sag", 95.0, 3500.0, T2, Lumbar)
        },
        Row {
            body_part: "LSPINE",
            ..row("SIEMENS", "t1_tse_sag", 9.0, 550.0, T1, Lumbar)
        },
        Row {
            body_part: "CSPINE",
            ..row("SIEMENS", "t2_tse_tra", 100.0, 4000.0, T2, Cervical)
        },
        Row {
            scanning: &["SE", "IR"],
            ti: Some(160.0),
            ..row("SIEMENS", "t2_tirm_sag", 60.0, 4000.0, Stir, Unknown)
        },
        Row {
            contrast: true,
            ..row("SIEMENS", "t1_tse_sag_fs_post HWS", 10.0, 600.0, T1Post, Cervical)
        },
        Row {
            image_type: &["DERIVED", "PRIMARY", "DIXON", "WATER"],
            ..row("SIEMENS", "t2_tse_dixon_sag_W", 90.0, 3500.0, DixonWater, Unknown)
        },
        Row {
            image_type: &["DERIVED", "PRIMARY", "DIXON", "FAT"],
            ..row("SIEMENS", "t2_tse_dixon_sag_F", 90.0, 3500.0, DixonFat, Unknown)
        },
        Row {
            image_type: &["DERIVED", "PRIMARY", "DIXON", "IN_PHASE"],
            ..row("SIEMENS", "t2_tse_dixon_sag_in", 90.0, 3500.0, DixonInPhase, Unknown)
        },
        Row {
            image_type: &["DERIVED", "PRIMARY", "DIXON", "OPP_PHASE"],
            ..row(
                "SIEMENS",
                "t2_tse_dixon_sag_opp",
                90.0,
                3500.0,
                DixonOpposedPhase,
                Unknown,
            )
        },
        Row {
            scanning: &["GR"],
            image_type: &["ORIGINAL", "PRIMARY", "M", "NORM"],
            ..row("SIEMENS", "localizer", 4.0, 8.6, Localizer, Unknown)
        },
        Row {
            scanning: &["EP"],
            ..row("SIEMENS", "ep2d_diff_tra LWS", 70.0, 5000.0, Dwi, Lumbar)
        },
        Row {
            scanning: &["GR"],
            ..row("SIEMENS", "t2_me2d_tra (medic)", 20.0, 700.0, Gre, Unknown)
        },
        // GE
        Row {
            body_part: "LSPINE",
            ..row("GE MEDICAL SYSTEMS", "Sag T2 FRFSE", 102.0, 3200.0, T2, Lumbar)
        },
        Row {
            body_part: "LSPINE",
            ..row("GE MEDICAL SYSTEMS", "SAG T1 FSE", 10.0, 500.0, T1, Lumbar)
        },
        Row {
            scanning: &["SE", "IR"],
            ti: Some(900.0),
            ..row("GE MEDICAL SYSTEMS", "Sag T1 FLAIR C-Spine", 10.0, 2000.0, T1, Cervical)
        },
        Row {
            scanning: &["IR"],
            ti: Some(150.0),
            ..row("GE MEDICAL SYSTEMS", "Sag STIR", 40.0, 3500.0, Stir, Unknown)
        },
        row("GE MEDICAL SYSTEMS", "Ax T2 FRFSE L-SPINE", 100.0, 4000.0, T2, Lumbar),
        row(
            "GE MEDICAL SYSTEMS",
            "Sag T2 IDEAL WATER",
            90.0,
            3000.0,
            DixonWater,
            Unknown,
        ),
        row(
            "GE MEDICAL SYSTEMS",
            "Sag T2 IDEAL FAT",
            90.0,
            3000.0,
            DixonFat,
            Unknown,
        ),
        row(
            "GE MEDICAL SYSTEMS",
            "Sag T2 IDEAL InPhase",
            90.0,
            3000.0,
            DixonInPhase,
            Unknown,
        ),
        row(
            "GE MEDICAL SYSTEMS",
            "Sag T2 IDEAL OutPhase",
            90.0,
            3000.0,
            DixonOpposedPhase,
            Unknown,
        ),
        Row {
            image_type: &["ORIGINAL", "PRIMARY", "LOCALIZER"],
            scanning: &["GR"],
            ..row("GE MEDICAL SYSTEMS", "3-Plane Loc", 1.5, 5.0, Localizer, Unknown)
        },
        Row {
            contrast: true,
            ..row("GE MEDICAL SYSTEMS", "Sag T1 FSE +C", 10.0, 500.0, T1Post, Unknown)
        },
        Row {
            scanning: &["EP"],
            ..row("GE MEDICAL SYSTEMS", "Ax DWI", 80.0, 6000.0, Dwi, Unknown)
        },
        // Philips
        Row {
            body_part: "SPINE",
            ..row("Philips Medical Systems", "sT2W_TSE", 100.0, 3000.0, T2, Spine)
        },
        Row {
            body_part: "SPINE",
            ..row("Philips Medical Systems", "sT1W_TSE", 8.0, 450.0, T1, Spine)
        },
        row("Philips Medical Systems", "T2W_TSE_TRA LWS", 110.0, 3500.0, T2, Lumbar),
        Row {
            scanning: &["IR"],
            ti: Some(180.0),
            ..row("Philips Medical Systems", "sSTIR", 60.0, 4200.0, Stir, Unknown)
        },
        Row {
            image_type: &["ORIGINAL", "PRIMARY", "W", "W", "DIXON"],
            ..row(
                "Philips Medical Systems",
                "sT2W_mDIXON_W",
                90.0,
                3000.0,
                DixonWater,
                Unknown,
            )
        },
        Row {
            image_type: &["ORIGINAL", "PRIMARY", "F", "F", "DIXON"],
            ..row(
                "Philips Medical Systems",
                "sT2W_mDIXON_F",
                90.0,
                3000.0,
                DixonFat,
                Unknown,
            )
        },
        row(
            "Philips Medical Systems",
            "sT2W_mDIXON_IP",
            90.0,
            3000.0,
            DixonInPhase,
            Unknown,
        ),
        row(
            "Philips Medical Systems",
            "sT2W_mDIXON_OP",
            90.0,
            3000.0,
            DixonOpposedPhase,
            Unknown,
        ),
        Row {
            scanning: &["GR"],
            ..row("Philips Medical Systems", "Survey", 2.0, 10.0, Localizer, Unknown)
        },
        Row {
            contrast: true,
            ..row("Philips Medical Systems", "sT1W_TSE_GD", 8.0, 450.0, T1Post, Unknown)
        },
        Row {
            scanning: &["SE"],
            ..row("Philips Medical Systems", "Brain T2W_TSE", 100.0, 3000.0, T2, NotSpine)
        },
        // Canon (Toshiba)
        Row {
            body_part: "TSPINE",
            ..row("CANON_MEC", "Sag T1 FSE", 12.0, 520.0, T1, Thoracic)
        },
        row("CANON_MEC", "T2W_FSE_SAG T-SPINE", 110.0, 3800.0, T2, Thoracic),
        Row {
            scanning: &["IR"],
            ti: Some(170.0),
            ..row("CANON_MEC", "STIR_SAG", 50.0, 4500.0, Stir, Unknown)
        },
        row(
            "CANON_MEC",
            "T2_SAG_Dixon WFOP water",
            90.0,
            3000.0,
            DixonWater,
            Unknown,
        ),
        Row {
            scanning: &["GR"],
            ..row("TOSHIBA_MEC", "Locator", 3.0, 8.0, Localizer, Unknown)
        },
        Row {
            contrast: true,
            ..row("CANON_MEC", "T1_SAG_POST", 12.0, 520.0, T1Post, Unknown)
        },
        Row {
            scanning: &["GR"],
            ..row("CANON_MEC", "Ax FFE T2*", 15.0, 600.0, Gre, Unknown)
        },
        // Unnamed series fall back on physics; whole-spine by body part.
        Row {
            body_part: "WHOLESPINE",
            ..row("SIEMENS", "sag 1", 10.0, 500.0, T1, WholeSpine)
        },
        row("SIEMENS", "sag 2", 110.0, 4000.0, T2, Unknown),
        row("SIEMENS", "sag 3", 30.0, 3000.0, Pd, Unknown),
    ]
}

#[test]
fn vendor_naming_conventions() {
    let rules = Rules::builtin();
    let mut failures = Vec::new();
    for r in rows() {
        let h = header(&r);
        let (family, region) = (rules.family(&h), rules.region(&h));
        if family != r.family || region != r.region {
            failures.push(format!(
                "{} {:?}: got {:?}/{:?}, want {:?}/{:?}",
                r.vendor, r.description, family, region, r.family, r.region
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn all_four_vendors_are_covered() {
    let vendors: std::collections::BTreeSet<_> = rows()
        .iter()
        .map(|r| r.vendor.split([' ', '_']).next().unwrap().to_uppercase())
        .collect();
    for v in ["SIEMENS", "GE", "PHILIPS", "CANON"] {
        assert!(vendors.contains(v), "{v}");
    }
}

#[test]
fn usability_reasons() {
    let rules = Rules::builtin();
    let shape = SeriesShape {
        plane: Some(Plane::Sagittal),
        slices: 15,
        uniform_matrix: true,
    };
    let t2 = header(&Row {
        body_part: "LSPINE",
        ..row("GE", "Sag T2 FRFSE", 100.0, 3000.0, Family::T2, Region::Lumbar)
    });
    assert_eq!(classify(&rules, &t2, shape, 3, false).skip_reason, None);
    let coronal = SeriesShape {
        plane: Some(Plane::Coronal),
        ..shape
    };
    assert_eq!(
        classify(&rules, &t2, coronal, 3, false).skip_reason,
        Some(SkipReason::PlaneNotUsed)
    );
    let thin = SeriesShape { slices: 2, ..shape };
    assert_eq!(
        classify(&rules, &t2, thin, 3, false).skip_reason,
        Some(SkipReason::TooFewSlices)
    );
    let unnamed = header(&row("GE", "Sag T2", 100.0, 3000.0, Family::T2, Region::Unknown));
    assert_eq!(
        classify(&rules, &unnamed, shape, 3, false).skip_reason,
        Some(SkipReason::RegionUnknown)
    );
    assert_eq!(classify(&rules, &unnamed, shape, 3, true).skip_reason, None);
    let loc = header(&row("GE", "3-Plane Loc", 1.0, 5.0, Family::Localizer, Region::Unknown));
    assert_eq!(
        classify(&rules, &loc, shape, 3, true).skip_reason,
        Some(SkipReason::Localizer)
    );
}

#[test]
fn bad_rule_tables_are_clear_errors() {
    let err = Rules::from_toml("[[family]]\nfamily = \"t2\"\nname = \"(unclosed\"").unwrap_err();
    assert!(err.to_string().contains("rule 1 (family): bad regex"), "{err}");
    let err = Rules::from_toml("[[family]]\nfamily = \"t2\"").unwrap_err();
    assert!(err.to_string().contains("at least one condition"), "{err}");
    let err = Rules::from_toml("[[family]]\nfamily = \"t9\"\nname = \"x\"").unwrap_err();
    assert!(err.to_string().contains("t9"), "{err}");
    let err = Rules::from_toml("[[family]]\nfamily = \"t2\"\nnmae = \"x\"").unwrap_err();
    assert!(err.to_string().contains("nmae"), "{err}");
}
