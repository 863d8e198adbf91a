//! The report agent's prompt, laid out as in the published method: a system
//! prompt, the region's template, the agents' structured tokens
//! (`<classification>`, `<localization>`, `<similar_case_report>`) and the
//! image position where visual tokens go, in the chat format of the model
//! (ChatML for SmolLM2).

use super::PromptPart;

pub const SYSTEM: &str = "You are a radiologist writing a spine MRI report. \
Use only the findings listed in <localization>; state each one with its level, side and severity. \
Do not add findings. Levels and structures not listed are normal. \
Write two sections: FINDINGS: and IMPRESSION: (a numbered list, most urgent first).";

/// The section headings of the region's report template.
pub fn template(region: &str) -> &'static str {
    match region {
        "thoracic" => {
            "FINDINGS:\nALIGNMENT:\nMARROW:\nDISCS:\nCORD:\nPARAVERTEBRAL SOFT TISSUES:\nSPECIFIC LEVELS:\n\nIMPRESSION:"
        }
        _ => {
            "FINDINGS:\nALIGNMENT:\nMARROW:\nDISCS:\nCORD:\nPARAVERTEBRAL SOFT TISSUES:\n\
             AXIAL DISCS, DURAL COMPRESSION & FORAMINA:\n\nIMPRESSION:"
        }
    }
}

/// The prompt parts: text, then the visual tokens (when the bundle has a
/// projector), then the rest of the text. `correction` lists what a
/// previous draft got wrong (the verifier's findings).
pub fn build(
    region: &str,
    structured_tokens: &str,
    visual: Option<candle_core::Tensor>,
    correction: Option<&str>,
) -> Vec<PromptPart> {
    let mut user = format!(
        "Region: {region}.\nTemplate:\n{}\n\n{structured_tokens}\n",
        template(region)
    );
    if let Some(c) = correction {
        user += &format!("\nYour previous draft was wrong: {c}\nWrite the report again.\n");
    }
    user += "Write the report.";
    let mut parts = vec![PromptPart::Text(format!(
        "<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n<image>"
    ))];
    if let Some(v) = visual {
        parts.push(PromptPart::Embeddings(v));
    }
    parts.push(PromptPart::Text(format!(
        "</image>\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )));
    parts
}
