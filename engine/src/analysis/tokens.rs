//! The structured tokens of the published method's report prompt:
//! `<classification>{"<condition>": 0|1, ...}</classification>` (readable
//! names, 1 = present) and `<similar_case_report>...</similar_case_report>`
//! (the top-1 retrieved reference report). The levels and sides the agents
//! found go in `<localization>...</localization>`, this product's addition,
//! because the published format carries no level.

use super::StudyAnalysis;

/// Readable condition names as the published prompt spells them.
fn readable(condition: &str) -> &str {
    match condition {
        "canal_stenosis" => "Spinal Canal Stenosis",
        "pars_defect" => "Pars Defect",
        "cord_compression" => "Cord Compression",
        "marrow_edema" => "Marrow Edema",
        "inflammation" => "Inflammation",
        "foraminal_stenosis" => "Neural Foraminal Stenosis",
        "spondylolisthesis" => "Spondylolisthesis",
        "perineural_cyst" => "Perineural Cyst",
        "herniation" => "Disc Herniation",
        "hemangioma" => "Hemangioma",
        "lipomatosis" => "Epidural Lipomatosis",
        "marrow_lesion" => "Marrow Lesion",
        "compression_fracture" => "Compression Fracture",
        "disc_height_loss" => "Disc Height Loss",
        "subarticular_stenosis" => "Subarticular Stenosis",
        "synovial_cyst" => "Synovial Cyst",
        "disc_degeneration" => "Disc Degeneration",
        "cord_signal" => "Cord Signal Abnormality",
        other => other,
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

pub fn structured_tokens(a: &StudyAnalysis) -> String {
    let mut conditions: Vec<&str> = a.probabilities.iter().map(|(_, c, _)| c.as_str()).collect();
    conditions.dedup();
    conditions.sort();
    conditions.dedup();
    let present = |c: &str| a.findings.iter().any(|f| f.condition == c);
    let classification: Vec<String> = conditions
        .iter()
        .map(|c| format!("{}: {}", json_string(readable(c)), u8::from(present(c))))
        .collect();
    let localization: Vec<String> = a
        .findings
        .iter()
        .map(|f| {
            format!(
                "{} {} {} {} (p={:.2})",
                f.level,
                readable(&f.condition),
                f.side,
                f.severity,
                f.probability
            )
        })
        .collect();
    let similar = a.similar_cases.first().map(|c| c.report.trim()).unwrap_or("");
    format!(
        "<classification>{{{}}}</classification>\n<localization>{}</localization>\n<similar_case_report>{}</similar_case_report>",
        classification.join(", "),
        localization.join("; "),
        similar
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{Finding, SimilarCase, StudyAnalysis};

    #[test]
    fn tokens_mark_found_conditions_and_carry_the_top_report() {
        let finding = Finding {
            condition: "herniation".into(),
            level: "L4-L5".into(),
            probability: 0.9,
            side: "left".into(),
            side_probability: 0.8,
            severity: "severe".into(),
            severity_probability: 0.7,
        };
        let a = StudyAnalysis {
            synthetic_model: true,
            bundle: "b 1".into(),
            series: vec![],
            levels_covered: vec!["L4-L5".into()],
            findings: vec![finding],
            graded: vec![],
            similar_cases: vec![
                SimilarCase {
                    case: "a".into(),
                    similarity: 0.9,
                    report: "FIRST".into(),
                },
                SimilarCase {
                    case: "b".into(),
                    similarity: 0.5,
                    report: "SECOND".into(),
                },
            ],
            patient_embedding: vec![],
            probabilities: vec![
                ("L4-L5".into(), "herniation".into(), 0.9),
                ("L4-L5".into(), "hemangioma".into(), 0.1),
            ],
            structured_tokens: String::new(),
            visual_tokens: None,
            slice_embeddings: None,
            seconds: 0.0,
        };
        let t = structured_tokens(&a);
        assert!(t.starts_with("<classification>{"), "{t}");
        assert!(t.contains("\"Disc Herniation\": 1"), "{t}");
        assert!(t.contains("\"Hemangioma\": 0"), "{t}");
        assert!(
            t.contains("<localization>L4-L5 Disc Herniation left severe (p=0.90)</localization>"),
            "{t}"
        );
        assert!(t.ends_with("<similar_case_report>FIRST</similar_case_report>"), "{t}");
    }
}
