//! The report agent on a full phantom study: SmolLM2-135M-Instruct (GGUF
//! from `scripts/setup`) writes drafts from the structured tokens, the
//! verifier checks them, and whatever text ends up in the report states no
//! finding the agents did not find. With the bundle's adapter, grounded
//! decoding and the short token limits used here, a draft may be verified
//! or cut off (then the composer's text is used); both paths are checked
//! for what they must record. The CLI
//! (`analyze --language-model`) and the daemon (`[report] language_model`)
//! are each tested.

use std::path::{Path, PathBuf};
use std::process::Command;

use spineagent_tests::*;

fn language_model() -> PathBuf {
    let lm = root().join("models/lm/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(lm.exists(), "{} missing: run scripts/setup", lm.display());
    lm
}

#[test]
fn the_report_agent_never_reports_a_finding_the_agents_did_not_find() {
    let lm = language_model();
    let tmp = tempfile::tempdir().unwrap();
    let study = tmp.path().join("s");
    run(Command::new(bin())
        .args([
            "phantom",
            "study",
            "--seed",
            "880051",
            "--region",
            "lumbar",
            "--vendor",
            "ge",
            "--standard",
        ])
        .args(["--finding", "herniation:L4-L5:right:severe:extrusion", "--out"])
        .arg(&study));
    let out = tmp.path().join("o");
    run(Command::new(bin())
        .args([
            "analyze",
            "--threads",
            "2",
            "--max-new-tokens",
            "96",
            "--report-budget",
            "600",
        ])
        .arg("--language-model")
        .arg(&lm)
        .arg("--out")
        .arg(&out)
        .arg(&study));
    check_agent_outputs(&out);
}

/// What a report written through the agent must show in its directory
/// (`analyze --out`, or the daemon's spool/reports/<study>).
fn check_agent_outputs(out: &Path) {
    let agent: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report_agent.json")).unwrap()).unwrap();
    let drafts = agent["drafts"].as_array().unwrap();
    assert!(!drafts.is_empty());
    for d in drafts {
        assert!(d["prompt_tokens"].as_u64().unwrap() > 100, "{d}");
        assert!(d["new_tokens"].as_u64().unwrap() > 0, "{d}");
    }
    // With the bundle's visual projector, every prompt carries its 64 visual
    // tokens (training/report_lm/projector.py), and says so.
    let bundle = spineagent_engine::bundle::Bundle::open(&root().join("models/spinefm-tiny")).unwrap();
    let visual = if bundle.model("report_projector").is_some() {
        64
    } else {
        0
    };
    assert_eq!(agent["visual_tokens"], visual, "{agent}");
    let report = std::fs::read_to_string(out.join("report.txt")).unwrap();
    let reason = agent["reason"].as_str().unwrap();
    match agent["source"].as_str().unwrap() {
        "composer" => {
            assert_eq!(
                report,
                std::fs::read_to_string(out.join("report_composer.txt")).unwrap()
            );
            assert!(
                reason.contains("failed verification") || reason.contains("budget"),
                "{reason}"
            );
            // A failed draft names what was wrong with it.
            assert!(!drafts.last().unwrap()["discrepancies"].as_array().unwrap().is_empty());
        }
        "language_model" => assert!(reason.starts_with("verified"), "{reason}"),
        other => panic!("unknown text source {other}"),
    }
    // Whoever wrote it, the report states only what the agents found.
    let analysis: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("analysis.json")).unwrap()).unwrap();
    let findings = analysis["findings"].as_array().unwrap();
    for s in spineagent_engine::report::verify::stated_findings(&report) {
        assert!(
            findings
                .iter()
                .any(|f| f["condition"] == s.condition && f["level"] == s.level.as_str()),
            "{s:?} stated but not found by the agents:\n{report}"
        );
    }
    // The SR says which text it carries and why.
    let dump =
        String::from_utf8_lossy(&run(Command::new("dsrdump").arg("+Pl").arg(out.join("sr.dcm"))).stdout).to_string();
    let line = dump
        .lines()
        .find(|l| l.contains("Report text source"))
        .expect("text source in the SR");
    let expected = if agent["source"] == "composer" {
        "deterministic composer ("
    } else {
        "language model SmolLM2"
    };
    assert!(line.contains(expected), "{line}");
}

#[test]
fn the_daemon_writes_reports_through_the_agent_when_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let truth = phantom_study(
        &tmp.path().join("s"),
        880_052,
        "siemens",
        "lumbar",
        &["canal_stenosis:L3-L4:central:severe"],
        &["--standard"],
    );
    let d = Daemon::start(Opts {
        bundle: Some(root().join("models/spinefm-tiny")),
        language_model: Some((language_model(), 64)),
        ..Opts::default()
    });
    let files = phantom_series_dirs(&tmp.path().join("s"));
    let o = d.storescu("MODALITY", &["-q", "+sd"], &files);
    assert!(o.status.success(), "{}", stderr(&o));
    let dir = d
        .spool()
        .join("reports")
        .join(truth["study_instance_uid"].as_str().unwrap());
    // Generous: CI runs the heavy tests side by side on two cores, and each
    // draft takes tens of seconds there.
    d.wait_for("report", std::time::Duration::from_secs(600), || {
        dir.join("sr.dcm").exists()
    });
    check_agent_outputs(&dir);
}

/// Grounded decoding with the real model: whatever SmolLM2 writes for a
/// crafted set of agent findings, no clause of the text states a finding
/// outside them or denies one of them (the guide takes such tokens back as
/// they are written), as long as the guide had steers left.
#[test]
fn grounded_decoding_keeps_the_models_text_within_the_agents_findings() {
    use spineagent_engine::analysis::Finding;
    use spineagent_engine::lm::{Guide, MAX_STEERS, ReportLm, prompt};
    use spineagent_engine::report::grounding::Grounding;
    use spineagent_engine::report::verify::{Discrepancy, stated_findings, verify};

    let findings = vec![
        Finding::certain("herniation", "L4-L5", "left", "severe"),
        Finding::certain("foraminal_stenosis", "L5-S1", "right", "moderate"),
    ];
    let levels: Vec<String> = ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"].map(String::from).to_vec();
    let tokens = "<classification>{\"Disc Herniation\": 1, \"Neural Foraminal Stenosis\": 1}</classification>\n\
                  <localization>L4-L5 Disc Herniation left severe (p=0.90); \
                  L5-S1 Neural Foraminal Stenosis right moderate (p=0.80)</localization>\n\
                  <similar_case_report>FINDINGS:\nDISCS: Mild loss of disc height at L2-3.\n\
                  IMPRESSION:\n1. Mild loss of disc height at L2-3.</similar_case_report>";
    let adapter = root().join("models/spinefm-tiny/report_adapter.safetensors");
    let loras = spineagent_engine::lm::load_loras(&adapter, 1.0).unwrap();
    let mut lm = ReportLm::load(&language_model(), &loras).unwrap();
    let grounding = Grounding {
        findings: &findings,
        levels: &levels,
    };
    let guide: &dyn Guide = &grounding;
    let parts = prompt::build("lumbar", tokens, None, None);
    let generated = lm.generate(&parts, 160, None, Some(guide), |_| {}).unwrap();
    // A draft cut off by the token limit ends in a clause the guide has not
    // seen finished: judge the finished clauses.
    let text = match generated.truncated {
        true => &generated.text[..generated.text.rfind(['.', '\n']).map_or(0, |i| i + 1)],
        false => &generated.text,
    };
    assert!(generated.new_tokens > 0);
    if generated.steered >= MAX_STEERS {
        eprintln!("SKIPPED the grounding check: the guide spent its {MAX_STEERS} steers:\n{text}");
        return;
    }
    for s in stated_findings(text) {
        assert!(
            findings
                .iter()
                .any(|f| f.condition == s.condition && f.level == s.level),
            "{s:?} stated under grounded decoding ({} steers):\n{text}",
            generated.steered
        );
    }
    for d in verify(text, &findings) {
        assert!(
            matches!(d, Discrepancy::Missing { .. } | Discrepancy::Structure(_)),
            "{d} under grounded decoding:\n{text}"
        );
    }
}
