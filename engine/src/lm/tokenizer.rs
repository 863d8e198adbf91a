//! The report model's tokenizer, built with the `tokenizers` crate from the
//! vocabulary and merges inside the GGUF file (`tokenizer.ggml.*`), so the
//! model is one file and nothing is fetched: byte-level BPE (GPT-2 style,
//! which SmolLM2 and Llama 3 use) with the model's special tokens kept whole.

use candle_core::quantized::gguf_file;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    #[error("GGUF tokenizer: {0}")]
    Gguf(String),
    #[error("tokenizer: {0}")]
    Build(String),
}

fn strings(ct: &gguf_file::Content, key: &str) -> Result<Vec<String>, TokenizerError> {
    let v = ct
        .metadata
        .get(key)
        .ok_or_else(|| TokenizerError::Gguf(format!("no {key}")))?;
    let items = v.to_vec().map_err(|e| TokenizerError::Gguf(format!("{key}: {e}")))?;
    items
        .iter()
        .map(|i| {
            i.to_string()
                .cloned()
                .map_err(|e| TokenizerError::Gguf(format!("{key}: {e}")))
        })
        .collect()
}

/// The tokenizer and the ids the generation loop needs.
pub struct GgufTokenizer {
    pub tokenizer: Tokenizer,
    /// Tokens that end a generation (end of text, end of turn).
    pub stop_ids: Vec<u32>,
}

pub fn from_gguf(ct: &gguf_file::Content) -> Result<GgufTokenizer, TokenizerError> {
    let model = ct
        .metadata
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if model != "gpt2" {
        return Err(TokenizerError::Gguf(format!(
            "tokenizer model {model:?}: only byte-level BPE (gpt2) is supported"
        )));
    }
    let tokens = strings(ct, "tokenizer.ggml.tokens")?;
    let merges: Merges = strings(ct, "tokenizer.ggml.merges")?
        .into_iter()
        .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect();
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| TokenizerError::Build(e.to_string()))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    // Token type 3 = control tokens (<|im_start|>, <|endoftext|>, ...): whole,
    // never split into bytes.
    let types: Vec<i64> = ct
        .metadata
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
        .map(|v| v.iter().map(|t| t.to_i32().map(i64::from).unwrap_or(1)).collect())
        .unwrap_or_default();
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, t)| **t == 3)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    tokenizer
        .add_special_tokens(special)
        .map_err(|e| TokenizerError::Build(e.to_string()))?;
    let id = |key: &str| ct.metadata.get(key).and_then(|v| v.to_u32().ok());
    let mut stop_ids: Vec<u32> = id("tokenizer.ggml.eos_token_id").into_iter().collect();
    for name in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>"] {
        if let Some(i) = tokenizer.token_to_id(name)
            && !stop_ids.contains(&i)
        {
            stop_ids.push(i);
        }
    }
    Ok(GgufTokenizer { tokenizer, stop_ids })
}
