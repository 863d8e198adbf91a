//! Per-slice results: what the encoders and the slice agents make of each
//! slice on its own, before anything is pooled over a series. Because each
//! slice is computed alone, slices computed one by one as they arrive (the
//! daemon's streaming path) and a whole stack computed at once give the same
//! numbers, and a stack can be put together from cached slices.

use crate::npy::ArrayF32;

/// What the encoders make of slices: each slice's class token and patch
/// tokens from its own path (T1/T2 encoder or synthesizer) and the T2
/// encoder's class token (recognition); and, where the bundle's slice agents
/// reduce each slice for the series pool (0.6.0 on), their results too.
#[derive(Debug, Clone)]
pub struct EncodedSlices {
    /// [n, width]
    pub cls: ArrayF32,
    /// [n, patches, width]
    pub patches: ArrayF32,
    /// [n, width]
    pub rec_cls: ArrayF32,
    /// [n, 1, crop, crop]: channel 0 of the preprocessed slices, which
    /// slice agents with a convolutional stem read beside the tokens
    /// (bundle 0.3.0 on); [n, 1, 0, 0] for slice agents that do not.
    pub pixels: ArrayF32,
    /// The slice agents' results, when they were run with the encoders.
    pub agents: Option<SliceResults>,
}

/// The slice agents' outputs for a stack, kept small: recognition, argmax
/// masks, and what the series pool reads of the segmentation.
#[derive(Debug, Clone)]
pub struct SliceResults {
    /// [n, families + planes + regions] recognition logits.
    pub recognition: ArrayF32,
    /// One per slice.
    pub masks: Vec<SliceMasks>,
    pub pool: PoolInput,
}

/// What the series pool reads of the segmentation.
#[derive(Debug, Clone)]
pub enum PoolInput {
    /// The whole logits [n, classes, h, w] (bundles before 0.6.0): 3.9 MB
    /// a slice at 128 x 128, so never cached.
    Segmentation(ArrayF32),
    /// Per-slice reductions, by output name in the slice agents' order
    /// (`level_patches`, `level_cells`, `lesion_cells`; about 0.2 MB a slice).
    Maps(Vec<(String, ArrayF32)>),
}

#[derive(Debug, Clone)]
pub struct SliceMasks {
    pub side: usize,
    pub anatomy: Vec<u8>,
    pub lesion: Vec<u8>,
    /// Vertebral level per cell (bundle `levels`; 0 = outside), empty when
    /// the bundle's segmentation has no level channels.
    pub level: Vec<u8>,
}

impl EncodedSlices {
    pub fn len(&self) -> usize {
        self.cls.shape.first().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slice `i` alone.
    pub fn slice(&self, i: usize) -> EncodedSlices {
        EncodedSlices {
            cls: rows_of(&self.cls, i..i + 1),
            patches: rows_of(&self.patches, i..i + 1),
            rec_cls: rows_of(&self.rec_cls, i..i + 1),
            pixels: rows_of(&self.pixels, i..i + 1),
            agents: self.agents.as_ref().and_then(|a| a.slice(i)),
        }
    }

    /// Slices in order, one stack; None when the parts disagree in shape.
    /// The agents' results come along only when every part has them.
    pub fn concat(parts: &[&EncodedSlices]) -> Option<EncodedSlices> {
        let agents: Option<Vec<&SliceResults>> = parts.iter().map(|p| p.agents.as_ref()).collect();
        Some(EncodedSlices {
            cls: concat_rows(parts.iter().map(|p| &p.cls))?,
            patches: concat_rows(parts.iter().map(|p| &p.patches))?,
            rec_cls: concat_rows(parts.iter().map(|p| &p.rec_cls))?,
            pixels: concat_rows(parts.iter().map(|p| &p.pixels))?,
            agents: agents.and_then(|a| SliceResults::concat(&a)),
        })
    }
}

impl SliceResults {
    pub fn len(&self) -> usize {
        self.masks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.masks.is_empty()
    }

    /// Slice `i` alone; None for whole logits, which are not kept per slice.
    pub fn slice(&self, i: usize) -> Option<SliceResults> {
        let PoolInput::Maps(maps) = &self.pool else {
            return None;
        };
        Some(SliceResults {
            recognition: rows_of(&self.recognition, i..i + 1),
            masks: vec![self.masks.get(i)?.clone()],
            pool: PoolInput::Maps(maps.iter().map(|(n, a)| (n.clone(), rows_of(a, i..i + 1))).collect()),
        })
    }

    /// Per-slice maps of several parts, in order; None when any part holds
    /// whole logits or the parts disagree in names or shapes.
    pub fn concat(parts: &[&SliceResults]) -> Option<SliceResults> {
        let maps: Vec<&Vec<(String, ArrayF32)>> = parts
            .iter()
            .map(|p| match &p.pool {
                PoolInput::Maps(m) => Some(m),
                PoolInput::Segmentation(_) => None,
            })
            .collect::<Option<_>>()?;
        let names: Vec<&String> = maps.first()?.iter().map(|(n, _)| n).collect();
        let mut pool = Vec::with_capacity(names.len());
        for (k, name) in names.iter().enumerate() {
            let column = maps
                .iter()
                .map(|m| m.get(k).filter(|(n, _)| n == *name).map(|(_, a)| a))
                .collect::<Option<Vec<_>>>()?;
            pool.push(((*name).clone(), concat_rows(column.into_iter())?));
        }
        Some(SliceResults {
            recognition: concat_rows(parts.iter().map(|p| &p.recognition))?,
            masks: parts.iter().flat_map(|p| p.masks.iter().cloned()).collect(),
            pool: PoolInput::Maps(pool),
        })
    }
}

/// Slices `range` of a stack (the slice agents run on chunks of it).
pub(crate) fn rows_range(e: &EncodedSlices, range: std::ops::Range<usize>) -> EncodedSlices {
    EncodedSlices {
        cls: rows_of(&e.cls, range.clone()),
        patches: rows_of(&e.patches, range.clone()),
        rec_cls: rows_of(&e.rec_cls, range.clone()),
        pixels: rows_of(&e.pixels, range),
        agents: None,
    }
}

/// The slice agents' results of consecutive chunks of one stack, joined;
/// None when their shapes disagree. Whole logits join too (a chunked run
/// of an older bundle's agents).
pub(crate) fn join_results(parts: Vec<SliceResults>) -> Option<SliceResults> {
    if parts.len() == 1 {
        return parts.into_iter().next();
    }
    if parts.iter().all(|p| matches!(p.pool, PoolInput::Maps(_))) {
        return SliceResults::concat(&parts.iter().collect::<Vec<_>>());
    }
    let segs: Vec<&ArrayF32> = parts
        .iter()
        .map(|p| match &p.pool {
            PoolInput::Segmentation(s) => Some(s),
            PoolInput::Maps(_) => None,
        })
        .collect::<Option<_>>()?;
    Some(SliceResults {
        recognition: concat_rows(parts.iter().map(|p| &p.recognition))?,
        masks: parts.iter().flat_map(|p| p.masks.iter().cloned()).collect(),
        pool: PoolInput::Segmentation(concat_rows(segs.into_iter())?),
    })
}

/// Argmax anatomy, lesion and level class per cell of each slice of the
/// segmentation logits [s, k, h, w] (`anatomy` + `lesion` + `levels`
/// channels; no level map when the logits have fewer channels).
pub fn masks_of(seg: &ArrayF32, anatomy: usize, lesion: usize, levels: usize) -> Vec<SliceMasks> {
    let [s, k, h, w] = match seg.shape.as_slice() {
        &[s, k, h, w] if seg.data.len() == s * k * h * w => [s, k, h, w],
        _ => return Vec::new(),
    };
    let nv = if k >= anatomy + lesion + levels { levels } else { 0 };
    let plane = h * w;
    (0..s)
        .map(|i| {
            let base = i * k * plane;
            let pick = |first: usize, count: usize, p: usize| -> u8 {
                let mut best = (0usize, f32::NEG_INFINITY);
                for c in 0..count {
                    let v = seg.data[base + (first + c) * plane + p];
                    if v > best.1 {
                        best = (c, v);
                    }
                }
                best.0 as u8
            };
            SliceMasks {
                side: h,
                anatomy: (0..plane).map(|p| pick(0, anatomy, p)).collect(),
                lesion: (0..plane).map(|p| pick(anatomy, lesion, p)).collect(),
                level: if nv > 0 {
                    (0..plane).map(|p| pick(anatomy + lesion, nv, p)).collect()
                } else {
                    Vec::new()
                },
            }
        })
        .collect()
}

pub(crate) fn rows_of(a: &ArrayF32, range: std::ops::Range<usize>) -> ArrayF32 {
    let per = a.shape[1..].iter().product::<usize>();
    let mut shape = a.shape.clone();
    shape[0] = range.len();
    ArrayF32 {
        shape,
        data: a.data[range.start * per..range.end * per].to_vec(),
    }
}

/// [n, c, h, w] -> [n, 1, h, w], channel 0.
pub(crate) fn first_channel(a: &ArrayF32) -> ArrayF32 {
    let n = a.shape.first().copied().unwrap_or(0);
    let c = a.shape.get(1).copied().unwrap_or(1);
    let plane: usize = a.shape.get(2..).map_or(0, |d| d.iter().product());
    if a.shape.len() != 4 || a.data.len() < n * c * plane {
        return ArrayF32 {
            shape: vec![n, 1, 0, 0],
            data: Vec::new(),
        };
    }
    let mut data = Vec::with_capacity(n * plane);
    for i in 0..n {
        data.extend_from_slice(&a.data[i * c * plane..i * c * plane + plane]);
    }
    let mut shape = a.shape.clone();
    shape[1] = 1;
    ArrayF32 { shape, data }
}

pub(crate) fn concat_rows<'a>(parts: impl Iterator<Item = &'a ArrayF32>) -> Option<ArrayF32> {
    let mut out: Option<ArrayF32> = None;
    for p in parts {
        match &mut out {
            None => out = Some(p.clone()),
            Some(o) => {
                if o.shape[1..] != p.shape[1..] {
                    return None;
                }
                o.shape[0] += p.shape[0];
                o.data.extend_from_slice(&p.data);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(v: f32, shape: Vec<usize>) -> ArrayF32 {
        ArrayF32 {
            data: vec![v; shape.iter().product()],
            shape,
        }
    }

    fn results(v: f32, n: usize) -> SliceResults {
        SliceResults {
            recognition: filled(v, vec![n, 4]),
            masks: (0..n)
                .map(|_| SliceMasks {
                    side: 1,
                    anatomy: vec![v as u8],
                    lesion: vec![0],
                    level: vec![1],
                })
                .collect(),
            pool: PoolInput::Maps(vec![
                ("level_patches".into(), filled(v, vec![n, 3, 2])),
                ("lesion_cells".into(), filled(v, vec![n, 2, 4])),
            ]),
        }
    }

    fn enc(v: f32, n: usize, agents: bool) -> EncodedSlices {
        EncodedSlices {
            cls: filled(v, vec![n, 2]),
            patches: filled(v, vec![n, 3, 2]),
            rec_cls: filled(v, vec![n, 2]),
            pixels: filled(v, vec![n, 1, 2, 2]),
            agents: agents.then(|| results(v, n)),
        }
    }

    #[test]
    fn first_channel_keeps_channel_zero_of_every_slice() {
        // 2 slices x 3 channels x 2 x 2: value = slice * 100 + channel * 10 + pixel.
        let data = (0..2)
            .flat_map(|s| (0..3).flat_map(move |c| (0..4).map(move |p| (s * 100 + c * 10 + p) as f32)))
            .collect();
        let a = ArrayF32 {
            shape: vec![2, 3, 2, 2],
            data,
        };
        let c0 = first_channel(&a);
        assert_eq!(c0.shape, vec![2, 1, 2, 2]);
        assert_eq!(c0.data, vec![0.0, 1.0, 2.0, 3.0, 100.0, 101.0, 102.0, 103.0]);
    }

    #[test]
    fn first_channel_of_pixels_not_held_is_an_empty_plane() {
        // The streaming path's stacks keep their shape but no data.
        let a = ArrayF32 {
            shape: vec![5, 3, 128, 128],
            data: Vec::new(),
        };
        let c0 = first_channel(&a);
        assert_eq!(c0.shape, vec![5, 1, 0, 0]);
        assert!(c0.data.is_empty());
    }

    #[test]
    fn encodings_with_pixels_slice_and_concatenate_together() {
        let (a, b) = (enc(1.0, 2, false), enc(2.0, 1, false));
        let both = EncodedSlices::concat(&[&a, &b]).unwrap();
        assert_eq!(both.pixels.shape, vec![3, 1, 2, 2]);
        assert_eq!(both.slice(2).pixels.data, vec![2.0; 4]);
        assert_eq!(both.slice(0).pixels.data, vec![1.0; 4]);
        assert!(both.agents.is_none());
    }

    #[test]
    fn slice_agent_results_slice_and_concatenate_with_their_slices() {
        let (a, b) = (enc(1.0, 2, true), enc(2.0, 1, true));
        let both = EncodedSlices::concat(&[&b.slice(0), &a.slice(1), &a.slice(0)]).unwrap();
        let agents = both.agents.as_ref().unwrap();
        assert_eq!(agents.len(), 3);
        assert_eq!(agents.recognition.shape, vec![3, 4]);
        assert_eq!(&agents.recognition.data[..4], &[2.0; 4]);
        assert_eq!(
            agents.masks.iter().map(|m| m.anatomy[0]).collect::<Vec<_>>(),
            vec![2, 1, 1]
        );
        let PoolInput::Maps(maps) = &agents.pool else {
            panic!("maps expected");
        };
        assert_eq!(maps[0].0, "level_patches");
        assert_eq!(maps[0].1.shape, vec![3, 3, 2]);
        assert_eq!(maps[1].1.shape, vec![3, 2, 4]);
        assert_eq!(&maps[1].1.data[8..], &[1.0; 16]);
    }

    #[test]
    fn a_stack_with_one_slice_lacking_agent_results_has_none() {
        let (a, b) = (enc(1.0, 1, true), enc(2.0, 1, false));
        let both = EncodedSlices::concat(&[&a, &b]).unwrap();
        assert_eq!(both.len(), 2);
        assert!(
            both.agents.is_none(),
            "the analysis must run the slice agents on the whole stack"
        );
    }

    #[test]
    fn whole_logits_are_not_kept_per_slice() {
        let r = SliceResults {
            recognition: filled(0.0, vec![2, 4]),
            masks: results(0.0, 2).masks,
            pool: PoolInput::Segmentation(filled(0.0, vec![2, 5, 2, 2])),
        };
        assert!(r.slice(0).is_none());
        assert!(SliceResults::concat(&[&r]).is_none());
    }

    #[test]
    fn masks_take_the_argmax_of_each_group_of_channels() {
        // One slice, 1 x 2 cells; anatomy 2 channels, lesion 2, levels 3.
        let mut seg = filled(0.0, vec![1, 7, 1, 2]);
        let set = |seg: &mut ArrayF32, c: usize, p: usize, v: f32| seg.data[c * 2 + p] = v;
        set(&mut seg, 1, 0, 5.0); // anatomy 1 at cell 0
        set(&mut seg, 3, 1, 5.0); // lesion 1 at cell 1
        set(&mut seg, 6, 0, 5.0); // level 2 at cell 0
        let m = masks_of(&seg, 2, 2, 3);
        assert_eq!(m.len(), 1);
        assert_eq!(
            (m[0].anatomy.clone(), m[0].lesion.clone(), m[0].level.clone()),
            (vec![1, 0], vec![0, 1], vec![2, 0])
        );
        assert!(masks_of(&seg, 2, 2, 4)[0].level.is_empty(), "no level channels");
        assert!(
            masks_of(&filled(0.0, vec![1, 7, 2]), 2, 2, 3).is_empty(),
            "not [s, k, h, w]"
        );
    }
}
