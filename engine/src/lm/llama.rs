//! A Llama-family decoder over GGUF weights (candle), written here rather
//! than taken from `candle_transformers::quantized_llama` for two things
//! the report agent needs and that model does not offer: a forward pass
//! from embeddings (visual tokens are spliced in as embeddings, not token
//! ids) and LoRA adapters applied on top of the quantized projections at
//! load time.
//!
//! The arithmetic follows the Llama architecture: RMSNorm, rotary position
//! embedding (interleaved pairs, llama.cpp's NORM convention for `llama`
//! GGUFs), grouped-query attention with a KV cache, SwiGLU MLP.

use std::collections::HashMap;

use candle_core::quantized::{QMatMul, gguf_file};
use candle_core::{DType, Device, Module, Tensor};

pub type Result<T> = candle_core::Result<T>;

/// Longest context the rotary tables are made for.
pub const MAX_POSITIONS: usize = 4096;

/// A low-rank update `x @ A^T @ B^T * scale` added to one projection.
#[derive(Debug, Clone)]
pub struct Lora {
    /// [rank, in]
    pub a: Tensor,
    /// [out, rank]
    pub b: Tensor,
    pub scale: f64,
}

impl Lora {
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_matmul(&self.a.t()?)?
            .broadcast_matmul(&self.b.t()?)?
            .affine(self.scale, 0.0)
    }
}

/// A quantized projection with an optional LoRA update.
#[derive(Debug, Clone)]
struct Linear {
    base: QMatMul,
    lora: Option<Lora>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.base.forward(x)?;
        match &self.lora {
            Some(l) => y + l.apply(x)?,
            None => Ok(y),
        }
    }
}

#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32)
    }
}

#[derive(Debug, Clone)]
struct Block {
    attn_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    cache: Option<(Tensor, Tensor)>,
}

/// Shapes read from the GGUF metadata.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub layers: usize,
    pub vocab: usize,
}

pub struct Llama {
    pub dims: Dims,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: RmsNorm,
    output: QMatMul,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

fn meta_u32(ct: &gguf_file::Content, key: &str) -> Result<usize> {
    match ct.metadata.get(key) {
        Some(v) => Ok(v.to_u32()? as usize),
        None => candle_core::bail!("GGUF metadata has no {key}"),
    }
}

fn meta_f32(ct: &gguf_file::Content, key: &str, default: f32) -> f32 {
    ct.metadata.get(key).and_then(|v| v.to_f32().ok()).unwrap_or(default)
}

impl Llama {
    /// Loads a `llama` GGUF; `loras` maps a projection name
    /// (`blk.N.attn_q`, `blk.N.attn_v`, ...) to its adapter.
    pub fn load<R: std::io::Read + std::io::Seek>(
        ct: &gguf_file::Content,
        reader: &mut R,
        loras: &HashMap<String, Lora>,
        device: &Device,
    ) -> Result<Llama> {
        let arch = ct
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if arch != "llama" {
            candle_core::bail!("GGUF architecture {arch:?}: only llama is supported");
        }
        let heads = meta_u32(ct, "llama.attention.head_count")?;
        let hidden = meta_u32(ct, "llama.embedding_length")?;
        let dims = Dims {
            hidden,
            heads,
            kv_heads: meta_u32(ct, "llama.attention.head_count_kv")?,
            head_dim: hidden / heads,
            layers: meta_u32(ct, "llama.block_count")?,
            vocab: 0,
        };
        let eps = meta_f32(ct, "llama.attention.layer_norm_rms_epsilon", 1e-5) as f64;
        let theta = meta_f32(ct, "llama.rope.freq_base", 10_000.0);
        let mut tensor = |name: &str| ct.tensor(reader, name, device);
        let embed_q = tensor("token_embd.weight")?;
        let embed = embed_q.dequantize(device)?;
        let vocab = embed.dim(0)?;
        let norm = RmsNorm {
            weight: tensor("output_norm.weight")?.dequantize(device)?,
            eps,
        };
        // Small models tie the output projection to the embedding.
        let output = match tensor("output.weight") {
            Ok(t) => QMatMul::Tensor(t.dequantize(device)?),
            Err(_) => QMatMul::Tensor(embed.clone()),
        };
        let mut blocks = Vec::with_capacity(dims.layers);
        for i in 0..dims.layers {
            let mut linear = |part: &str| -> Result<Linear> {
                let name = format!("blk.{i}.{part}");
                let q = ct.tensor(reader, &format!("{name}.weight"), device)?;
                // candle's quantized CPU kernels go row by row: a prompt of
                // a thousand tokens took minutes. Dequantized, the projections
                // are plain f32 GEMMs (135M parameters = 540 MB).
                Ok(Linear {
                    base: QMatMul::Tensor(q.dequantize(device)?),
                    lora: loras.get(&name).cloned(),
                })
            };
            let q = linear("attn_q")?;
            let k = linear("attn_k")?;
            let v = linear("attn_v")?;
            let o = linear("attn_output")?;
            let gate = linear("ffn_gate")?;
            let up = linear("ffn_up")?;
            let down = linear("ffn_down")?;
            let mut norm_of = |part: &str| -> Result<RmsNorm> {
                Ok(RmsNorm {
                    weight: ct
                        .tensor(reader, &format!("blk.{i}.{part}.weight"), device)?
                        .dequantize(device)?,
                    eps,
                })
            };
            blocks.push(Block {
                attn_norm: norm_of("attn_norm")?,
                ffn_norm: norm_of("ffn_norm")?,
                q,
                k,
                v,
                o,
                gate,
                up,
                down,
                cache: None,
            });
        }
        let (cos, sin) = rotary_tables(dims.head_dim, theta, device)?;
        Ok(Llama {
            dims: Dims { vocab, ..dims },
            embed,
            blocks,
            norm,
            output,
            cos,
            sin,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Token embeddings [1, n, hidden] of `ids`.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::new(ids, &self.device)?;
        self.embed.index_select(&ids, 0)?.unsqueeze(0)
    }

    pub fn clear_cache(&mut self) {
        for b in &mut self.blocks {
            b.cache = None;
        }
    }

    /// Forgets the cached positions from `len` on (decoding steps back to
    /// position `len`).
    pub fn truncate_cache(&mut self, len: usize) -> Result<()> {
        for b in &mut self.blocks {
            b.cache = match b.cache.take() {
                Some((k, v)) if len > 0 => {
                    let keep = len.min(k.dim(2)?);
                    Some((k.narrow(2, 0, keep)?, v.narrow(2, 0, keep)?))
                }
                _ => None,
            };
        }
        Ok(())
    }

    /// Runs embeddings [1, n, hidden] at positions `start..start + n` (the
    /// KV cache holds `0..start`); returns the last position's logits.
    pub fn forward_embeds(&mut self, x: &Tensor, start: usize) -> Result<Tensor> {
        let (_, n, _) = x.dims3()?;
        if start + n > MAX_POSITIONS {
            candle_core::bail!("context of {} tokens exceeds {MAX_POSITIONS}", start + n);
        }
        let mask = if n > 1 {
            Some(causal_mask(n, start, &self.device)?)
        } else {
            None
        };
        let cos = self.cos.narrow(0, start, n)?;
        let sin = self.sin.narrow(0, start, n)?;
        let d = self.dims;
        let mut h = x.clone();
        for b in &mut self.blocks {
            let residual = h.clone();
            let x = b.attn_norm.forward(&h)?;
            let heads = |t: Tensor, count: usize| -> Result<Tensor> {
                t.reshape((1, n, count, d.head_dim))?.transpose(1, 2)?.contiguous()
            };
            let q = heads(b.q.forward(&x)?, d.heads)?;
            let k = heads(b.k.forward(&x)?, d.kv_heads)?;
            let v = heads(b.v.forward(&x)?, d.kv_heads)?;
            let q = candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?;
            let (k, v) = match &b.cache {
                Some((ck, cv)) if start > 0 => (Tensor::cat(&[ck, &k], 2)?, Tensor::cat(&[cv, &v], 2)?),
                _ => (k, v),
            };
            b.cache = Some((k.clone(), v.clone()));
            // Grouped-query attention: each KV head serves heads / kv_heads queries.
            let group = d.heads / d.kv_heads;
            let kv_len = k.dim(2)?;
            let k = expand_kv(&k, group)?;
            let v = expand_kv(&v, group)?;
            let mut att = (q.matmul(&k.t()?)? / (d.head_dim as f64).sqrt())?;
            if let Some(m) = &mask {
                att = att.broadcast_add(&m.narrow(1, 0, kv_len)?)?;
            }
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let y = att.matmul(&v)?.transpose(1, 2)?.reshape((1, n, d.hidden))?;
            h = (b.o.forward(&y)? + residual)?;
            let residual = h.clone();
            let x = b.ffn_norm.forward(&h)?;
            let act = candle_nn::ops::silu(&b.gate.forward(&x)?)?;
            let y = b.down.forward(&(act * b.up.forward(&x)?)?)?;
            h = (y + residual)?;
        }
        let last = self.norm.forward(&h.narrow(1, n - 1, 1)?)?;
        self.output.forward(&last)?.squeeze(0)?.squeeze(0)
    }
}

fn expand_kv(x: &Tensor, group: usize) -> Result<Tensor> {
    if group == 1 {
        return Ok(x.clone());
    }
    let (b, h, s, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, h, group, s, d))?
        .reshape((b, h * group, s, d))?
        .contiguous()
}

/// cos/sin [MAX_POSITIONS, head_dim / 2] for the rotary embedding.
fn rotary_tables(head_dim: usize, theta: f32, device: &Device) -> Result<(Tensor, Tensor)> {
    let inv: Vec<f32> = (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf(2.0 * i as f32 / head_dim as f32))
        .collect();
    let inv = Tensor::new(inv.as_slice(), device)?.unsqueeze(0)?;
    let pos = Tensor::arange(0u32, MAX_POSITIONS as u32, device)?
        .to_dtype(DType::F32)?
        .unsqueeze(1)?;
    let angles = pos.broadcast_mul(&inv)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// Additive mask [n, start + n]: query i (at position start + i) sees keys
/// up to its own position.
fn causal_mask(n: usize, start: usize, device: &Device) -> Result<Tensor> {
    let total = start + n;
    let values: Vec<f32> = (0..n)
        .flat_map(|i| (0..total).map(move |j| if j <= start + i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(values, (n, total), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_lets_each_position_see_its_past_only() {
        let m = causal_mask(2, 3, &Device::Cpu).unwrap();
        let v: Vec<Vec<f32>> = m.to_vec2().unwrap();
        assert_eq!(v[0][..4], [0.0, 0.0, 0.0, 0.0]);
        assert!(v[0][4].is_infinite());
        assert_eq!(v[1], vec![0.0; 5]);
    }

    #[test]
    fn rotary_tables_start_at_identity() {
        let (cos, sin) = rotary_tables(8, 10_000.0, &Device::Cpu).unwrap();
        assert_eq!(cos.dims(), &[MAX_POSITIONS, 4]);
        let c: Vec<f32> = cos.get(0).unwrap().to_vec1().unwrap();
        let s: Vec<f32> = sin.get(0).unwrap().to_vec1().unwrap();
        assert_eq!(c, vec![1.0; 4]);
        assert_eq!(s, vec![0.0; 4]);
    }

    #[test]
    fn lora_adds_its_low_rank_update() {
        let d = Device::Cpu;
        let l = Lora {
            a: Tensor::new(&[[1f32, 0.0]], &d).unwrap(),
            b: Tensor::new(&[[2f32], [3.0]], &d).unwrap(),
            scale: 0.5,
        };
        let x = Tensor::new(&[[[4f32, 5.0]]], &d).unwrap();
        let y: Vec<f32> = l.apply(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(y, vec![4.0, 6.0]);
    }
}
