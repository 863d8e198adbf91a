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
    /// Tokens decoded, counting those a guide took back.
    pub decode_steps: usize,
    /// Times a guide steered the decoding (tokens taken back, ends refused).
    pub steered: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    /// Stopped by the deadline or the token limit rather than an end token.
    pub truncated: bool,
}

impl Generated {
    /// Decoding speed (every decoded token, kept or taken back).
    pub fn tokens_per_second(&self) -> f64 {
        if self.decode_seconds > 0.0 {
            self.decode_steps as f64 / self.decode_seconds
        } else {
            0.0
        }
    }
}

pub struct ReportLm {
    model: llama::Llama,
    tokenizer: tokenizer::GgufTokenizer,
    /// Each token's text (`prepare_guides`).
    pieces: Vec<String>,
    /// Name of the GGUF (recorded in the SR).
    pub name: String,
    /// Penalty on the logits of the last `REPEAT_WINDOW` tokens (1.0: none).
    pub repeat_penalty: f32,
}

/// The default penalty on logits of recently generated tokens (1.0: none).
/// A report repeats levels, digits and phrases by design ("L4-5", "No
/// canal or foraminal narrowing"); a penalty pushes a fine-tuned model
/// off them ("L-1", "LS3/4"), so it is off unless configured.
pub const DEFAULT_REPEAT_PENALTY: f32 = 1.0;
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
            pieces: Vec::new(),
            repeat_penalty: DEFAULT_REPEAT_PENALTY,
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
    /// tokens or `deadline`. `on_token` sees the text as it grows (and, when
    /// a guide takes tokens back, the text is shorter the next time).
    ///
    /// With a [`Guide`], decoding is steered: when the guide rejects a
    /// piece of the text, the token that wrote it is taken back (the KV
    /// cache steps back with it), banned at that position, and the next
    /// most likely token is written instead; when the guide says the text
    /// may not end yet, the end token is banned there. At most
    /// `MAX_STEERS` times per generation; after that the text is left as
    /// the model writes it (and the verifier judges it).
    pub fn generate(
        &mut self,
        prompt: &[PromptPart],
        max_new: usize,
        deadline: Option<Instant>,
        guide: Option<&dyn Guide>,
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
        let prompt_logits = self.model.forward_embeds(&input, 0)?;
        let mut logits = prompt_logits.clone();
        let prefill_seconds = started.elapsed().as_secs_f64();
        let decode_started = Instant::now();
        let mut state = Steering::default();
        let mut out: Vec<u32> = Vec::new();
        // Length of the text after each token (to find the token that
        // wrote a rejected byte).
        let mut ends: Vec<usize> = Vec::new();
        let mut truncated = true;
        let mut text = String::new();
        let mut decode_steps = 0usize;
        while out.len() < max_new {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let mut values: Vec<f32> = logits.to_vec1()?;
            if self.repeat_penalty != 1.0 {
                for &t in out.iter().rev().take(REPEAT_WINDOW) {
                    let v = &mut values[t as usize];
                    *v = if *v > 0.0 {
                        *v / self.repeat_penalty
                    } else {
                        *v * self.repeat_penalty
                    };
                }
            }
            for &t in state.banned_at(out.len()) {
                values[t as usize] = f32::NEG_INFINITY;
            }
            let guiding = guide.filter(|_| state.steers < MAX_STEERS);
            let next = match guiding.filter(|g| g.restricts(&text)) {
                Some(g) => self.best_allowed(&values, |piece| g.allows(&text, piece))?,
                None => argmax(&values),
            };
            // Where the guide wants text taken back, if anywhere.
            let rejected = if self.tokenizer.stop_ids.contains(&next) {
                match guiding.map(|g| g.check(&text, state.accepted, true)) {
                    Some(Verdict::Continue) => {
                        state.ban(out.len(), next);
                        state.steers += 1;
                        continue;
                    }
                    Some(Verdict::Reject(at)) => Some(at),
                    _ => {
                        truncated = false;
                        break;
                    }
                }
            } else {
                out.push(next);
                decode_steps += 1;
                let decoded = self
                    .tokenizer
                    .tokenizer
                    .decode(&out, true)
                    .map_err(|e| LmError::Tokenize(e.to_string()))?;
                if decoded.len() > text.len() && decoded.is_char_boundary(text.len()) {
                    on_token(&decoded[text.len()..]);
                }
                text = decoded;
                ends.push(text.len());
                match guiding.map(|g| g.check(&text, state.accepted, false)) {
                    Some(Verdict::Reject(at)) => Some(at),
                    Some(Verdict::Accept(upto)) => {
                        state.accepted = upto;
                        None
                    }
                    _ => None,
                }
            };
            if let Some(at) = rejected {
                logits = self.take_back(
                    &mut state,
                    &mut out,
                    &mut ends,
                    &mut text,
                    at,
                    prompt_tokens,
                    &prompt_logits,
                )?;
                continue;
            }
            let pos = prompt_tokens + out.len() - 1;
            logits = self.model.forward_embeds(&self.model.embed(&[next])?, pos)?;
        }
        Ok(Generated {
            text: text.trim().to_string(),
            prompt_tokens,
            new_tokens: out.len(),
            decode_steps,
            steered: state.steers,
            prefill_seconds,
            decode_seconds: decode_started.elapsed().as_secs_f64(),
            truncated,
        })
    }

    /// Builds each token's text, which a restricting guide reads (done on
    /// first use otherwise, inside a report's time).
    pub fn prepare_guides(&mut self) {
        if self.pieces.is_empty() {
            let vocab = self.tokenizer.tokenizer.get_vocab_size(true) as u32;
            self.pieces = (0..vocab)
                .map(|id| self.tokenizer.tokenizer.decode(&[id], false).unwrap_or_default())
                .collect();
        }
    }

    /// The most likely token whose text `allowed` takes (among the
    /// `RESTRICTED_CANDIDATES` most likely; the most likely if none is).
    fn best_allowed(&mut self, values: &[f32], allowed: impl Fn(&str) -> bool) -> Result<u32, LmError> {
        self.prepare_guides();
        let mut ranked: Vec<u32> = (0..values.len() as u32).collect();
        let k = RESTRICTED_CANDIDATES.min(ranked.len());
        if k < ranked.len() {
            ranked.select_nth_unstable_by(k, |a, b| values[*b as usize].total_cmp(&values[*a as usize]));
            ranked.truncate(k);
        }
        ranked.sort_by(|a, b| values[*b as usize].total_cmp(&values[*a as usize]));
        Ok(ranked
            .into_iter()
            .filter(|&id| values[id as usize].is_finite())
            .find(|&id| self.pieces.get(id as usize).is_some_and(|p| allowed(p)))
            .unwrap_or_else(|| argmax(values)))
    }

    /// Takes back the token that wrote byte `at` of the text and every
    /// token after it, bans it at its position, and returns the logits for
    /// that position again (the KV cache steps back to it).
    #[allow(clippy::too_many_arguments)]
    fn take_back(
        &mut self,
        state: &mut Steering,
        out: &mut Vec<u32>,
        ends: &mut Vec<usize>,
        text: &mut String,
        at: usize,
        prompt_tokens: usize,
        prompt_logits: &Tensor,
    ) -> Result<Tensor, LmError> {
        let i = ends.iter().position(|&e| e > at).unwrap_or(out.len().saturating_sub(1));
        if let Some(&bad) = out.get(i) {
            out.truncate(i);
            ends.truncate(i);
            text.truncate(ends.last().copied().unwrap_or(0));
            state.accepted = state.accepted.min(text.len());
            state.ban(i, bad);
            state.steers += 1;
        }
        // The cache keeps what comes before the last kept token, which is
        // run again for the logits after it.
        self.model.truncate_cache(prompt_tokens + out.len().saturating_sub(1))?;
        match out.last() {
            None => Ok(prompt_logits.clone()),
            Some(&last) => Ok(self
                .model
                .forward_embeds(&self.model.embed(&[last])?, prompt_tokens + out.len() - 1)?),
        }
    }
}

fn argmax(values: &[f32]) -> u32 {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u32)
        .unwrap_or(0)
}

/// Most tokens a guide may take back (or end tokens it may refuse) in one
/// generation: each costs a decoding step or more.
pub const MAX_STEERS: usize = 64;

/// What a [`Guide`] says of the text so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Fine; the text up to this byte offset is settled (need not be
    /// looked at again).
    Accept(usize),
    /// The token that wrote this byte offset must be taken back.
    Reject(usize),
    /// (At an end token) the text may not end here.
    Continue,
}

/// Steers generation: looks at the text as it grows. `accepted`: the bytes
/// it settled before; `at_end`: the model wants to stop here.
pub trait Guide {
    fn check(&self, text: &str, accepted: usize, at_end: bool) -> Verdict;
    /// Whether the next token is restricted after `text` (then the most
    /// likely token whose text `allows` takes is written).
    fn restricts(&self, _text: &str) -> bool {
        false
    }
    fn allows(&self, _text: &str, _piece: &str) -> bool {
        true
    }
}

/// How far down the ranking a restricted step looks for an allowed token.
const RESTRICTED_CANDIDATES: usize = 256;

/// Tokens banned per position, and how often decoding was steered.
#[derive(Default)]
struct Steering {
    bans: HashMap<usize, Vec<u32>>,
    steers: usize,
    accepted: usize,
}

impl Steering {
    fn banned_at(&self, position: usize) -> &[u32] {
        self.bans.get(&position).map(|v| v.as_slice()).unwrap_or(&[])
    }

    /// Bans `token` at `position`; bans further on belonged to text that
    /// is gone.
    fn ban(&mut self, position: usize, token: u32) {
        self.bans.retain(|&p, _| p <= position);
        self.bans.entry(position).or_default().push(token);
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
