//! Work while the study is still arriving: every stored instance of a
//! series the models take is decoded, preprocessed and encoded (its own
//! encoder, or the synthesizer) as soon as it is durable, in small batches,
//! and with a bundle whose slice agents reduce each slice (0.6.0 on) goes
//! through the slice agents too; the per-slice results wait in an
//! [`EncodeCache`]. When the study completes, the report stage finds its
//! slices done and runs only the series pooling, the study-level agents,
//! retrieval and the report.
//!
//! The cache is an accelerator, never a source of truth: a slice missing
//! from it (the daemon restarted, the cache was full, the instance was
//! still queued) is encoded at analysis time from the spool, with the same
//! result, since each slice is encoded on its own.
//!
//! The queue from the assembler is bounded: when the encoder falls behind,
//! the assembler waits, and with it the receiver's acknowledgements.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use spineagent_engine::analysis::{EncodedSlices, SpineModels};
use spineagent_engine::decode::decode_file;
use spineagent_engine::npy::ArrayF32;
use spineagent_kernels::cpu::preprocess;
use tokio::sync::mpsc;

use crate::assemble::classify::{Region, Rules};
use crate::assemble::geometry::{Plane, normal, plane_of};
use crate::metrics::Metrics;
use crate::spool::InstanceHeader;

/// A durably stored instance, as the assembler saw it.
#[derive(Debug, Clone)]
pub struct ArrivedInstance {
    pub header: InstanceHeader,
    pub path: PathBuf,
}

/// (SOP Instance UID, 1-based frame).
type SliceKey = (String, u32);

/// Per-slice encodings of studies not yet reported, bounded by a slice count.
pub struct EncodeCache {
    studies: Mutex<HashMap<String, HashMap<SliceKey, EncodedSlices>>>,
    max_slices: usize,
}

impl EncodeCache {
    pub fn new(max_slices: usize) -> EncodeCache {
        EncodeCache {
            studies: Mutex::new(HashMap::new()),
            max_slices,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<SliceKey, EncodedSlices>>> {
        // A panic while holding the lock cannot leave the map inconsistent
        // (single inserts and removals): keep using it.
        self.studies.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().values().map(|s| s.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores one slice's encoding; false when the cache is full.
    pub fn insert(&self, study: &str, sop: &str, frame: u32, encoded: EncodedSlices) -> bool {
        let mut studies = self.lock();
        if studies.values().map(|s| s.len()).sum::<usize>() >= self.max_slices {
            return false;
        }
        studies
            .entry(study.to_string())
            .or_default()
            .insert((sop.to_string(), frame), encoded);
        true
    }

    pub fn contains(&self, study: &str, sop: &str, frame: u32) -> bool {
        self.lock()
            .get(study)
            .is_some_and(|s| s.contains_key(&(sop.to_string(), frame)))
    }

    /// A stack's encodings in order, when every slice is cached.
    pub fn stack(&self, study: &str, slices: &[(String, u32)]) -> Option<EncodedSlices> {
        let studies = self.lock();
        let cached = studies.get(study)?;
        let parts: Option<Vec<&EncodedSlices>> = slices.iter().map(|k| cached.get(k)).collect();
        EncodedSlices::concat(&parts?)
    }

    /// Drops a study's encodings (reported, or no report).
    pub fn forget(&self, study: &str) {
        self.lock().remove(study);
    }
}

/// The encoder stage.
pub struct StreamEncoder {
    pub models: Arc<SpineModels>,
    pub cache: Arc<EncodeCache>,
    pub rules: Rules,
    pub oblique_threshold_degrees: f64,
    pub accept_unknown_region: bool,
    pub metrics: Arc<Metrics>,
}

/// Instances encoded together at most (one model call per family).
const BATCH: usize = 16;

impl StreamEncoder {
    /// The family an instance's series is encoded as, or None when the
    /// models would not use it (the assembler's rules, applied early).
    fn family_of(&self, h: &InstanceHeader) -> Option<String> {
        let region = self.rules.region(h);
        if region == Region::NotSpine || (region == Region::Unknown && !self.accept_unknown_region) {
            return None;
        }
        let plane = plane_of(normal(h.orientation.as_ref()?)?, self.oblique_threshold_degrees);
        if !matches!(plane, Plane::Sagittal | Plane::Axial) {
            return None;
        }
        let family = self.rules.family(h).as_str().to_string();
        self.models.takes_family(&family).then_some(family)
    }

    /// Encodes a batch; returns the slices cached. Errors are logged: the
    /// analysis encodes what is missing.
    fn encode_batch(&self, batch: Vec<ArrivedInstance>) -> usize {
        let spec = &self.models.bundle.manifest.preprocess;
        let mut by_family: HashMap<String, Vec<(ArrivedInstance, Vec<f32>, u32)>> = HashMap::new();
        for a in batch {
            let Some(family) = self.family_of(&a.header) else {
                continue;
            };
            let study = &a.header.study_instance_uid;
            let frames = match decode_file(&a.path) {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!("streaming encode: {e}");
                    continue;
                }
            };
            for (i, frame) in frames.iter().enumerate() {
                let number = i as u32 + 1;
                if self.cache.contains(study, &a.header.sop_instance_uid, number) {
                    continue;
                }
                match preprocess(&[frame.as_slice()], spec) {
                    Ok(pixels) => by_family
                        .entry(family.clone())
                        .or_default()
                        .push((a.clone(), pixels, number)),
                    Err(e) => tracing::debug!("streaming preprocess: {e}"),
                }
            }
        }
        let mut cached = 0;
        for (family, slices) in by_family {
            let per = slices.first().map(|s| s.1.len()).unwrap_or(0);
            let pixels = ArrayF32 {
                shape: vec![slices.len(), 3, spec.crop, spec.crop],
                data: slices.iter().flat_map(|s| s.1.iter().copied()).collect(),
            };
            debug_assert_eq!(pixels.data.len(), slices.len() * per);
            match self.models.encode_slices(&family, &pixels) {
                Ok(Some(encoded)) => {
                    for (i, (a, _, frame)) in slices.iter().enumerate() {
                        let h = &a.header;
                        if self
                            .cache
                            .insert(&h.study_instance_uid, &h.sop_instance_uid, *frame, encoded.slice(i))
                        {
                            cached += 1;
                        } else {
                            self.metrics.stream_cache_full_total.inc();
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(family = %family, "streaming encode failed (the analysis will retry): {e}"),
            }
        }
        self.metrics.stream_slices_encoded_total.inc_by(cached as u64);
        self.metrics.stream_cache_slices.set(self.cache.len() as i64);
        cached
    }

    /// Runs until the assembler's tap closes.
    pub async fn run(self, mut input: mpsc::Receiver<ArrivedInstance>) {
        let me = Arc::new(self);
        while let Some(first) = input.recv().await {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match input.try_recv() {
                    Ok(a) => batch.push(a),
                    Err(_) => break,
                }
            }
            let stage = me.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || stage.encode_batch(batch)).await {
                tracing::error!("streaming encoder task failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: f32) -> EncodedSlices {
        let a = |shape: Vec<usize>| ArrayF32 {
            data: vec![v; shape.iter().product()],
            shape,
        };
        EncodedSlices {
            cls: a(vec![1, 2]),
            patches: a(vec![1, 3, 2]),
            rec_cls: a(vec![1, 2]),
            pixels: a(vec![1, 1, 2, 2]),
            agents: None,
        }
    }

    #[test]
    fn stacks_come_back_whole_and_in_order_or_not_at_all() {
        let c = EncodeCache::new(10);
        assert!(c.insert("s", "a", 1, enc(1.0)));
        assert!(c.insert("s", "b", 1, enc(2.0)));
        let keys = [("b".to_string(), 1), ("a".to_string(), 1)];
        let stack = c.stack("s", &keys).unwrap();
        assert_eq!(stack.len(), 2);
        assert_eq!(stack.cls.data, vec![2.0, 2.0, 1.0, 1.0]);
        assert_eq!(stack.patches.shape, vec![2, 3, 2]);
        assert!(c.stack("s", &[("a".to_string(), 1), ("c".to_string(), 1)]).is_none());
        assert!(c.stack("other", &keys).is_none());
        c.forget("s");
        assert!(c.is_empty());
    }

    #[test]
    fn the_cache_is_bounded() {
        let c = EncodeCache::new(2);
        assert!(c.insert("s", "a", 1, enc(1.0)));
        assert!(c.insert("t", "a", 1, enc(1.0)));
        assert!(!c.insert("t", "b", 1, enc(1.0)));
        assert_eq!(c.len(), 2);
    }
}
