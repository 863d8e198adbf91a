//! The Medical Report Agent: the language model writes the findings and
//! impression from the agents' structured tokens; the verifier checks the
//! draft against the agents' findings; on a violation the model writes
//! again with the discrepancies stated; if that fails too, or the time
//! budget runs out, the deterministic composer's text is used. Whatever is
//! used, the outcome says which text it is and why (the SR records it).
//! With `guided` on, the model writes under grounded decoding
//! (`report::grounding`): the verifier's reading steers each clause as it
//! is written, and the finished draft is verified all the same.

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

use crate::analysis::StudyAnalysis;
use crate::lm::{Generated, Guide, ReportLm, prompt};

use super::compose::Report;
use super::grounding::Grounding;
use super::verify::{Discrepancy, verify};

/// Who wrote the report text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TextSource {
    LanguageModel,
    Composer,
}

/// One draft and what the verifier found in it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Draft {
    pub text: String,
    pub discrepancies: Vec<String>,
    pub new_tokens: usize,
    pub prompt_tokens: usize,
    /// Times grounded decoding took a token back or refused an end.
    pub steered: usize,
    pub seconds: f64,
    /// Of `seconds`, reading the prompt (prefill).
    pub prefill_seconds: f64,
    pub tokens_per_second: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentOutcome {
    /// The report to use (the composer's, or the model's split into its two
    /// sections).
    pub report: Report,
    pub source: TextSource,
    /// Why this text: "verified", or the reason for the fallback.
    pub reason: String,
    pub drafts: Vec<Draft>,
    /// Visual tokens the prompt carried (0: none), and why none when the
    /// bundle has a projector the model cannot take.
    pub visual_tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visual_note: Option<String>,
}

impl AgentOutcome {
    /// One line for the SR and the logs.
    pub fn describe(&self, model: &str) -> String {
        match self.source {
            TextSource::LanguageModel => format!("language model {model} ({})", self.reason),
            TextSource::Composer => format!("deterministic composer ({})", self.reason),
        }
    }
}

pub struct ReportAgent {
    pub lm: ReportLm,
    /// Longest a report may take, all drafts together.
    pub budget: Duration,
    pub max_new_tokens: usize,
    /// Drafts written before falling back (the first and one correction).
    pub attempts: usize,
    /// Grounded decoding (`report::grounding`) on; off, the model writes
    /// unsteered and only the verifier judges.
    pub guided: bool,
}

/// Splits a model text into its FINDINGS and IMPRESSION sections.
fn sections(text: &str) -> Option<(String, String)> {
    let upper = text.to_uppercase();
    let i = upper.find("IMPRESSION")?;
    let findings = text[..i].trim().to_string();
    let impression = text[i..].trim().to_string();
    if !findings.to_uppercase().contains("FINDINGS") {
        return None;
    }
    Some((findings, impression))
}

/// The analysis's visual tokens as the model's input [1, queries, hidden],
/// or why there are none.
fn visual_input(analysis: &StudyAnalysis, hidden: usize) -> (Option<Tensor>, Option<String>) {
    let Some(tokens) = &analysis.visual_tokens else {
        return (None, None);
    };
    match tokens.shape[..] {
        [queries, h] if h == hidden => match Tensor::from_vec(tokens.data.clone(), (1, queries, h), &Device::Cpu) {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(format!("visual tokens unusable: {e}"))),
        },
        _ => (
            None,
            Some(format!(
                "the bundle's projector makes tokens of shape {:?}, the language model's hidden size is {hidden}: \
                 no visual tokens",
                tokens.shape
            )),
        ),
    }
}

impl ReportAgent {
    pub fn write(&mut self, analysis: &StudyAnalysis, composed: &Report) -> AgentOutcome {
        let started = Instant::now();
        let deadline = started + self.budget;
        let mut drafts = Vec::new();
        let mut correction: Option<String> = None;
        let (visual, visual_note) = visual_input(analysis, self.lm.hidden_size());
        let visual_tokens = visual.as_ref().and_then(|v| v.dim(1).ok()).unwrap_or(0);
        let fallback = |reason: String, drafts: Vec<Draft>| AgentOutcome {
            report: composed.clone(),
            source: TextSource::Composer,
            reason,
            drafts,
            visual_tokens,
            visual_note: visual_note.clone(),
        };
        for _ in 0..self.attempts.max(1) {
            if Instant::now() >= deadline {
                return fallback(format!("report budget of {:?} spent", self.budget), drafts);
            }
            let parts = prompt::build(
                &composed.region,
                &analysis.structured_tokens,
                visual.clone(),
                correction.as_deref(),
            );
            let t = Instant::now();
            let grounding = Grounding {
                findings: &analysis.findings,
                levels: &analysis.levels_covered,
            };
            let guide = self.guided.then_some(&grounding as &dyn Guide);
            let generated: Generated =
                match self
                    .lm
                    .generate(&parts, self.max_new_tokens, Some(deadline), guide, |_| {})
                {
                    Ok(g) => g,
                    Err(e) => return fallback(format!("language model failed: {e}"), drafts),
                };
            let mut found: Vec<Discrepancy> = verify(&generated.text, &analysis.findings);
            if generated.truncated && found.is_empty() {
                found.push(Discrepancy::Structure("end of the report (generation was cut off)"));
            }
            let described: Vec<String> = found.iter().map(|d| d.to_string()).collect();
            drafts.push(Draft {
                text: generated.text.clone(),
                discrepancies: described.clone(),
                new_tokens: generated.new_tokens,
                prompt_tokens: generated.prompt_tokens,
                steered: generated.steered,
                seconds: t.elapsed().as_secs_f64(),
                prefill_seconds: generated.prefill_seconds,
                tokens_per_second: generated.tokens_per_second(),
            });
            if found.is_empty()
                && let Some((findings, impression)) = sections(&generated.text)
            {
                return AgentOutcome {
                    report: Report {
                        region: composed.region.clone(),
                        findings,
                        impression,
                        category: composed.category,
                    },
                    source: TextSource::LanguageModel,
                    reason: match (self.guided, drafts.last().map_or(0, |d| d.steered)) {
                        (true, steered) => format!(
                            "verified, draft {}, grounded decoding steered {steered} time(s)",
                            drafts.len()
                        ),
                        (false, _) => format!("verified, draft {}", drafts.len()),
                    },
                    drafts,
                    visual_tokens,
                    visual_note: visual_note.clone(),
                };
            }
            correction = Some(described.join("; "));
        }
        let last = drafts.last().map(|d| d.discrepancies.join("; ")).unwrap_or_default();
        fallback(format!("{} draft(s) failed verification: {last}", drafts.len()), drafts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::npy::ArrayF32;

    #[test]
    fn model_text_is_split_into_its_sections() {
        let (f, i) = sections("FINDINGS:\nDISCS: ok.\n\nIMPRESSION:\n1. Normal.").unwrap();
        assert_eq!(f, "FINDINGS:\nDISCS: ok.");
        assert_eq!(i, "IMPRESSION:\n1. Normal.");
        assert!(sections("DISCS: ok. IMPRESSION: 1.").is_none());
        assert!(sections("FINDINGS: ok.").is_none());
    }

    fn with_visual(tokens: Option<ArrayF32>) -> StudyAnalysis {
        StudyAnalysis {
            synthetic_model: true,
            bundle: "test".into(),
            series: vec![],
            levels_covered: vec![],
            findings: vec![],
            graded: vec![],
            similar_cases: vec![],
            patient_embedding: vec![],
            probabilities: vec![],
            structured_tokens: String::new(),
            visual_tokens: tokens,
            slice_embeddings: None,
            seconds: 0.0,
        }
    }

    #[test]
    fn visual_tokens_go_in_only_at_the_models_hidden_size() {
        let tokens = ArrayF32 {
            shape: vec![64, 8],
            data: (0..64 * 8).map(|i| i as f32).collect(),
        };
        let (t, note) = visual_input(&with_visual(Some(tokens.clone())), 8);
        let t = t.expect("tokens of the model's size are used");
        assert_eq!(t.dims(), &[1, 64, 8]);
        assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), tokens.data);
        assert!(note.is_none());

        let (t, note) = visual_input(&with_visual(Some(tokens)), 576);
        assert!(t.is_none());
        assert!(note.unwrap().contains("hidden size is 576"));

        let (t, note) = visual_input(&with_visual(None), 576);
        assert!(t.is_none() && note.is_none(), "no projector, nothing to say");
    }
}
