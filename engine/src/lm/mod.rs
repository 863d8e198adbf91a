//! The Medical Report Agent's language model: a quantized Llama-family GGUF
//! (default SmolLM2-135M-Instruct) run with candle on the CPU, with a KV
//! cache and streaming generation. [`llama`] is the decoder (embeddings in,
//! LoRA on top of the quantized weights), [`tokenizer`] the byte-level BPE
//! from the GGUF's own vocabulary, [`prompt`] the published prompt layout.
//! What it writes is checked by `report::verify` before anyone sees it.

pub mod llama;
pub mod prompt;
pub mod tokenizer;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};

pub use llama::Lora;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LmError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("model: {0}")]
    Model(#[from] candle_core::Error),
    #[error(transparent)]
    Tokenizer(#[from] tokenizer::TokenizerError),
    #[error("tokenize: {0}")]
    Tokenize(String),
}

/// One piece of the model's input: text, or embeddings already in the
/// model's hidden size (visual tokens from the bundle's projector).
pub enum PromptPart {
    Text(String),
    Embeddings(Tensor),
}

/// What one generation produced.
#[derive(Debug, Clone)]
pub struct Generated {
    pub text: String,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    /// Stopped by the deadline or the token limit rather than an end token.
    pub truncated: bool,
}

impl Generated {
    pub fn tokens_per_second(&self) -> f64 {
        if self.decode_seconds > 0.0 {
            self.new_tokens as f64 / self.decode_seconds
        } else {
            0.0
        }
    }
}

pub struct ReportLm {
    model: llama::Llama,
    tokenizer: tokenizer::GgufTokenizer,
    /// Name of the GGUF (recorded in the SR).
    pub name: String,
}

/// Penalty on logits of recently generated tokens: small models loop
/// without it.
const REPEAT_PENALTY: f32 = 1.15;
const REPEAT_WINDOW: usize = 64;

impl ReportLm {
    /// Loads a GGUF and, optionally, LoRA adapters for its projections.
    pub fn load(path: &Path, loras: &HashMap<String, Lora>) -> Result<ReportLm, LmError> {
        let read_err = |reason: String| LmError::Read {
            path: path.display().to_string(),
            reason,
        };
        let mut file = std::fs::File::open(path).map_err(|e| read_err(e.to_string()))?;
        let ct = gguf_file::Content::read(&mut file).map_err(|e| read_err(e.to_string()))?;
        let tokenizer = tokenizer::from_gguf(&ct)?;
        let model = llama::Llama::load(&ct, &mut file, loras, &Device::Cpu)?;
        Ok(ReportLm {
            model,
            tokenizer,
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.model.dims.hidden
    }

    pub fn count_tokens(&self, text: &str) -> Result<usize, LmError> {
        Ok(self.encode(text)?.len())
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, LmError> {
        let enc = self
            .tokenizer
            .tokenizer
            .encode(text, false)
            .map_err(|e| LmError::Tokenize(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Greedy generation (deterministic: the same input gives the same
    /// report) with a repetition penalty, until an end token, `max_new`
    /// tokens or `deadline`. `on_token` sees the text as it grows.
    pub fn generate(
        &mut self,
        prompt: &[PromptPart],
        max_new: usize,
        deadline: Option<Instant>,
        mut on_token: impl FnMut(&str),
    ) -> Result<Generated, LmError> {
        let started = Instant::now();
        let mut parts = Vec::new();
        let mut prompt_tokens = 0;
        for p in prompt {
            match p {
                PromptPart::Text(t) => {
                    let ids = self.encode(t)?;
                    prompt_tokens += ids.len();
                    if !ids.is_empty() {
                        parts.push(self.model.embed(&ids)?);
                    }
                }
                PromptPart::Embeddings(e) => {
                    prompt_tokens += e.dim(1)?;
                    parts.push(e.clone());
                }
            }
        }
        let input = Tensor::cat(&parts, 1)?;
        self.model.clear_cache();
        let mut logits = self.model.forward_embeds(&input, 0)?;
        let prefill_seconds = started.elapsed().as_secs_f64();
        let decode_started = Instant::now();
        let mut out: Vec<u32> = Vec::new();
        let mut truncated = true;
        let mut text = String::new();
        while out.len() < max_new {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let mut values: Vec<f32> = logits.to_vec1()?;
            for &t in out.iter().rev().take(REPEAT_WINDOW) {
                let v = &mut values[t as usize];
                *v = if *v > 0.0 {
                    *v / REPEAT_PENALTY
                } else {
                    *v * REPEAT_PENALTY
                };
            }
            let next = values
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i as u32)
                .unwrap_or(0);
            if self.tokenizer.stop_ids.contains(&next) {
                truncated = false;
                break;
            }
            out.push(next);
            let decoded = self
                .tokenizer
                .tokenizer
                .decode(&out, true)
                .map_err(|e| LmError::Tokenize(e.to_string()))?;
            if decoded.len() > text.len() && decoded.is_char_boundary(text.len()) {
                on_token(&decoded[text.len()..]);
            }
            text = decoded;
            let pos = prompt_tokens + out.len() - 1;
            logits = self.model.forward_embeds(&self.model.embed(&[next])?, pos)?;
        }
        Ok(Generated {
            text: text.trim().to_string(),
            prompt_tokens,
            new_tokens: out.len(),
            prefill_seconds,
            decode_seconds: decode_started.elapsed().as_secs_f64(),
            truncated,
        })
    }
}

/// Reads LoRA adapters from a safetensors file: for each adapted
/// projection `P` (GGUF names, e.g. `blk.3.attn_q`), tensors `P.lora_a`
/// [rank, in] and `P.lora_b` [out, rank]; `scale` is alpha / rank.
pub fn load_loras(path: &Path, scale: f64) -> Result<HashMap<String, Lora>, LmError> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| LmError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut out = HashMap::new();
    for (name, a) in &tensors {
        let Some(base) = name.strip_suffix(".lora_a") else {
            continue;
        };
        let Some(b) = tensors.get(&format!("{base}.lora_b")) else {
            return Err(LmError::Read {
                path: path.display().to_string(),
                reason: format!("{base}.lora_a without {base}.lora_b"),
            });
        };
        if a.dim(0)? != b.dim(1)? {
            return Err(LmError::Read {
                path: path.display().to_string(),
                reason: format!("{base}: rank of lora_a {:?} and lora_b {:?} differ", a.dims(), b.dims()),
            });
        }
        out.insert(
            base.to_string(),
            Lora {
                a: a.to_dtype(candle_core::DType::F32)?,
                b: b.to_dtype(candle_core::DType::F32)?,
                scale,
            },
        );
    }
    Ok(out)
}

/// Seconds a generation of `new` tokens after a `prompt`-token prompt is
/// expected to take, from measured rates.
pub fn expected_seconds(prompt: usize, new: usize, prefill_per_s: f64, decode_per_s: f64) -> Duration {
    let s = prompt as f64 / prefill_per_s.max(1e-6) + new as f64 / decode_per_s.max(1e-6);
    Duration::from_secs_f64(s.min(1e6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapters_are_read_in_pairs_with_matching_ranks() {
        let dir = tempfile::tempdir().unwrap();
        let d = Device::Cpu;
        let path = dir.path().join("adapter.safetensors");
        let mut t = HashMap::new();
        t.insert(
            "blk.0.attn_q.lora_a".to_string(),
            Tensor::zeros((4, 8), candle_core::DType::F32, &d).unwrap(),
        );
        t.insert(
            "blk.0.attn_q.lora_b".to_string(),
            Tensor::ones((8, 4), candle_core::DType::F32, &d).unwrap(),
        );
        candle_core::safetensors::save(&t, &path).unwrap();
        let loras = load_loras(&path, 2.0).unwrap();
        assert_eq!(loras.len(), 1);
        assert_eq!(loras["blk.0.attn_q"].scale, 2.0);

        t.insert(
            "blk.1.attn_v.lora_a".to_string(),
            Tensor::zeros((3, 8), candle_core::DType::F32, &d).unwrap(),
        );
        t.insert(
            "blk.1.attn_v.lora_b".to_string(),
            Tensor::zeros((8, 4), candle_core::DType::F32, &d).unwrap(),
        );
        candle_core::safetensors::save(&t, &path).unwrap();
        assert!(load_loras(&path, 1.0).unwrap_err().to_string().contains("rank"));
    }
}
