//! The whole bundle on one study: encoders (or the synthesizer) per series
//! stack, slice agents, series pooling, patient embedding, condition agents
//! and retrieval, in the order `training/spinefm/pipeline.py` trains them.
//!
//! Input is already preprocessed (the kernels' NCHW tensors per stack) and
//! classified by tags; output is [`StudyAnalysis`], serializable as the
//! `spineagent analyze --json` document, with the structured tokens the
//! report stage reads.

mod crossref;
mod slices;
mod tokens;

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::bundle::{Bundle, BundleError, Dim};
use crate::model::{Model, ModelError, SessionOptions};
use crate::npy::{self, ArrayF32};
use crate::runtime::Runtime;

pub use slices::{EncodedSlices, PoolInput, SliceMasks, SliceResults};
pub use tokens::structured_tokens;

use crossref::CropGeometry;
pub use crossref::Placement;
use slices::{first_channel, masks_of};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnalysisError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("{0}")]
    Data(String),
}

/// Slices per encoder call: bounds memory on long series.
const CHUNK: usize = 16;
/// Findings at or above this probability are reported.
pub const DEFAULT_THRESHOLD: f32 = 0.5;
/// A level position is answered only where the level segmentation found
/// both of its vertebrae with at least this fraction of the best-covered
/// vertebra's mass (soft masses: every level gets a little from the tails).
const MIN_LEVEL_SHARE: f32 = 0.2;

/// The roster entry of a bundle whose axial stacks take their levels from
/// the sagittal ones (`crossref`).
const CROSS_REFERENCE_AGENT: &str = "level_cross_reference";

/// A stack between the slice agents and the series pool.
struct Stack {
    input: SeriesInput,
    path: &'static str,
    recognition: ArrayF32,
    masks: Vec<SliceMasks>,
    pooling: Pooling,
}

enum Pooling {
    /// The series pool's outputs (bundles whose series pool reads the logits).
    Done(Vec<ArrayF32>),
    /// Its inputs, for after the cross-reference.
    Pending {
        cls: ArrayF32,
        patches: ArrayF32,
        maps: Vec<(String, ArrayF32)>,
    },
}

enum EncoderPath {
    T1,
    T2,
    Synthesizer(Vec<f32>),
}

impl EncoderPath {
    fn name(&self) -> &'static str {
        match self {
            EncoderPath::T1 => "encoder_t1",
            EncoderPath::T2 => "encoder_t2",
            EncoderPath::Synthesizer(_) => "synthesizer",
        }
    }
}

/// One preprocessed series stack, classified from its tags.
pub struct SeriesInput {
    pub series_instance_uid: String,
    pub description: String,
    /// Family as the rules named it (t1, t2, stir, dixon_water, ...).
    pub family: String,
    /// sagittal or axial.
    pub plane: String,
    /// [slices, 3, crop, crop] float32, slices in stack order.
    pub pixels: ArrayF32,
    /// SOP Instance UID of each slice (key-slice references).
    pub sop_instance_uids: Vec<String>,
    /// The source images' matrix (maps mask cells back to pixels).
    pub rows: usize,
    pub cols: usize,
    /// The slices' encoder outputs when they were computed as the images
    /// arrived ([`SpineModels::encode_slices`]); `pixels` may then hold no
    /// data (its shape still gives the slice count).
    pub encoded: Option<EncodedSlices>,
    /// Where the slices are in the patient, when the headers say: axial
    /// stacks take their levels from where they cross the sagittal ones.
    pub placement: Option<Placement>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeriesAnalysis {
    pub series_instance_uid: String,
    pub description: String,
    pub family: String,
    pub plane: String,
    /// The encoder path: encoder_t1, encoder_t2 or synthesizer.
    pub path: String,
    /// What the pixels say (recognition agent), with its probability.
    pub recognized_family: (String, f32),
    pub recognized_plane: (String, f32),
    pub recognized_region: (String, f32),
    /// True where the recognized family or plane disagrees with the tags.
    pub tags_disagree: bool,
    /// Pooling attention per slice (sums to 1): the slice selection.
    pub attention: Vec<f32>,
    /// The most attended slice (index, SOP Instance UID).
    pub key_slice: (usize, String),
    pub rows: usize,
    pub cols: usize,
    /// SOP Instance UID of each slice, in stack order.
    #[serde(skip)]
    pub sop_instance_uids: Vec<String>,
    #[serde(skip)]
    pub embedding: Vec<f32>,
    /// Per-slice argmax masks at 32x32 (anatomy, lesion), for SEG output.
    #[serde(skip)]
    pub masks: Vec<SliceMasks>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Finding {
    pub condition: String,
    pub level: String,
    pub probability: f32,
    pub side: String,
    pub side_probability: f32,
    pub severity: String,
    pub severity_probability: f32,
}

impl Finding {
    /// A finding given with certainty (crafted agent outputs: tests, and
    /// checks of the report path without a model).
    pub fn certain(condition: &str, level: &str, side: &str, severity: &str) -> Finding {
        Finding {
            condition: condition.into(),
            level: level.into(),
            probability: 1.0,
            side: side.into(),
            side_probability: 1.0,
            severity: severity.into(),
            severity_probability: 1.0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GradedLevel {
    pub level: String,
    /// Per graded task (canal, foraminal_left, ...): probabilities of
    /// normal/mild, moderate, severe.
    pub grades: Vec<(String, [f32; 3])>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SimilarCase {
    pub case: String,
    pub similarity: f32,
    pub report: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StudyAnalysis {
    pub synthetic_model: bool,
    pub bundle: String,
    pub series: Vec<SeriesAnalysis>,
    /// Level positions the study shows (where the agents answer).
    pub levels_covered: Vec<String>,
    pub findings: Vec<Finding>,
    pub graded: Vec<GradedLevel>,
    pub similar_cases: Vec<SimilarCase>,
    pub patient_embedding: Vec<f32>,
    /// Presence probability per covered position and condition.
    pub probabilities: Vec<(String, String, f32)>,
    pub structured_tokens: String,
    /// The report agent's visual tokens [queries, hidden] from the bundle's
    /// projector over every slice's class token; None when the bundle has
    /// no projector.
    #[serde(skip)]
    pub visual_tokens: Option<ArrayF32>,
    /// What the projector read: every analyzed slice's class token
    /// [slices, width] (`spineagent analyze --out` writes it, so that the
    /// projector is trained on the embeddings the engine serves).
    #[serde(skip)]
    pub slice_embeddings: Option<ArrayF32>,
    /// Wall time of the analysis (decode and preprocessing included when the
    /// caller measures them; see `spineagent analyze`).
    pub seconds: f64,
}

#[derive(serde::Deserialize)]
struct ReferenceCase {
    case: String,
    report: String,
}

/// The loaded bundle's models and tables.
pub struct SpineModels {
    pub bundle: Bundle,
    encoder_t1: Arc<Model>,
    encoder_t2: Arc<Model>,
    synthesizer: Arc<Model>,
    slice_agents: Arc<Model>,
    series_pool: Arc<Model>,
    patient: Arc<Model>,
    conditions: Arc<Model>,
    /// The report agent's visual projector (optional in a bundle).
    report_projector: Option<Arc<Model>>,
    index: ArrayF32,
    cases: Vec<ReferenceCase>,
    labels: Labels,
}

struct Labels {
    families: Vec<String>,
    synth_families: Vec<String>,
    planes: Vec<String>,
    regions: Vec<String>,
    slots: Vec<String>,
    levels: Vec<String>,
    positions: Vec<String>,
    conditions: Vec<String>,
    /// "disc" or "vertebra" per condition: where it can be reported.
    condition_kinds: Vec<String>,
    sides: Vec<String>,
    severities: Vec<String>,
    graded: Vec<String>,
    lumbar_discs: Vec<String>,
    anatomy: usize,
    lesion: usize,
}

fn argmax(v: &[f32]) -> (usize, f32) {
    v.iter().copied().enumerate().fold(
        (0, f32::NEG_INFINITY),
        |best, (i, x)| if x > best.1 { (i, x) } else { best },
    )
}

fn softmax(v: &[f32]) -> Vec<f32> {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = v.iter().map(|x| (x - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

impl SpineModels {
    /// Opens the bundle and loads its models.
    pub fn load(dir: &Path, options: &SessionOptions) -> Result<SpineModels, AnalysisError> {
        let bundle = Bundle::open(dir)?;
        let runtime = Runtime::global()?;
        let models = bundle
            .manifest
            .models
            .iter()
            .map(|m| Model::load(runtime, &bundle, &m.name, options).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        SpineModels::from_loaded(bundle, &models)
    }

    /// Builds on models already loaded (the daemon's, loaded and warmed up
    /// once at start), so no session is created twice.
    pub fn from_loaded(bundle: Bundle, models: &[Arc<Model>]) -> Result<SpineModels, AnalysisError> {
        let dir = bundle.dir.clone();
        let load = |name: &str| {
            models
                .iter()
                .find(|m| m.spec.name == name)
                .cloned()
                .ok_or_else(|| AnalysisError::Data(format!("{}: bundle has no model {name}", dir.display())))
        };
        let l = |name: &str| bundle.labels(name).map(|v| v.to_vec());
        let labels = Labels {
            families: l("families")?,
            synth_families: l("synthesizer_families")?,
            planes: l("planes")?,
            regions: l("regions")?,
            slots: l("slots")?,
            levels: l("levels")?,
            positions: l("positions")?,
            conditions: l("conditions")?,
            condition_kinds: l("condition_kinds")?,
            sides: l("sides")?,
            severities: l("severities")?,
            graded: l("graded")?,
            lumbar_discs: l("lumbar_discs")?,
            anatomy: l("anatomy")?.len(),
            lesion: l("lesion")?.len(),
        };
        let missing = |what: &str| AnalysisError::Data(format!("{}: bundle has no {what}", dir.display()));
        let index = npy::read_f32(
            &bundle
                .file("retrieval_index")
                .ok_or_else(|| missing("retrieval_index"))?,
        )
        .map_err(|e| AnalysisError::Data(e.to_string()))?;
        let reports = bundle
            .file("retrieval_reports")
            .ok_or_else(|| missing("retrieval_reports"))?;
        let cases: Vec<ReferenceCase> = serde_json::from_slice(
            &std::fs::read(&reports).map_err(|e| AnalysisError::Data(format!("{}: {e}", reports.display())))?,
        )
        .map_err(|e| AnalysisError::Data(format!("{}: {e}", reports.display())))?;
        if index.shape.first() != Some(&cases.len()) {
            return Err(AnalysisError::Data(
                "retrieval index and reports differ in length".into(),
            ));
        }
        let (patient, conditions) = (load("patient")?, load("conditions")?);
        // The index must be in the space of the embedding that queries it.
        let query = [&conditions, &patient]
            .into_iter()
            .find_map(|m| m.spec.outputs.iter().find(|t| t.name == "retrieval"));
        let rows = index.shape.get(1).copied().unwrap_or(0);
        if let Some(Dim::Fixed(width)) = query.and_then(|t| t.shape.last())
            && rows as i64 != *width
        {
            return Err(AnalysisError::Data(format!(
                "{}: retrieval index rows are {rows} wide, the retrieval embedding {width}",
                dir.display()
            )));
        }
        Ok(SpineModels {
            encoder_t1: load("encoder_t1")?,
            encoder_t2: load("encoder_t2")?,
            synthesizer: load("synthesizer")?,
            slice_agents: load("slice_agents")?,
            series_pool: load("series_pool")?,
            patient,
            conditions,
            report_projector: load("report_projector").ok(),
            index,
            cases,
            labels,
            bundle,
        })
    }

    fn slot_of(&self, family: &str, plane: &str) -> usize {
        let name = match (plane, family) {
            ("sagittal", "t1") => "sagittal_t1",
            ("sagittal", "t2") => "sagittal_t2",
            ("sagittal", _) => "sagittal_other",
            (_, "t2") => "axial_t2",
            _ => "axial_other",
        };
        self.labels.slots.iter().position(|s| s == name).unwrap_or(0)
    }

    /// Encoder outputs (cls [S,D], patches [S,N,D]) through `model`, in chunks.
    fn encode(&self, model: &Model, pixels: &ArrayF32, family: Option<&[f32]>) -> Result<[ArrayF32; 2], AnalysisError> {
        let s = pixels.shape[0];
        let per = pixels.data.len() / s.max(1);
        let mut cls = ArrayF32 {
            shape: vec![0],
            data: Vec::new(),
        };
        let mut patches = cls.clone();
        for start in (0..s).step_by(CHUNK) {
            let n = CHUNK.min(s - start);
            let mut shape = pixels.shape.clone();
            shape[0] = n;
            let mut inputs = vec![ArrayF32 {
                shape,
                data: pixels.data[start * per..(start + n) * per].to_vec(),
            }];
            if let Some(onehot) = family {
                inputs.push(ArrayF32 {
                    shape: vec![n, onehot.len()],
                    data: onehot.repeat(n),
                });
            }
            let out = model.run(inputs)?;
            cls.shape = out[0].shape.clone();
            patches.shape = out[1].shape.clone();
            cls.data.extend_from_slice(&out[0].data);
            patches.data.extend_from_slice(&out[1].data);
        }
        cls.shape[0] = s;
        patches.shape[0] = s;
        Ok([cls, patches])
    }

    /// Whether a series of this family has a path through the models (its
    /// own encoder or the synthesizer). Others are skipped by `analyze`.
    pub fn takes_family(&self, family: &str) -> bool {
        self.path_for(family).is_some()
    }

    /// A family's path: its own encoder, or the synthesizer with the
    /// family's one-hot.
    fn path_for(&self, family: &str) -> Option<EncoderPath> {
        match family {
            "t1" => Some(EncoderPath::T1),
            "t2" => Some(EncoderPath::T2),
            other => {
                let i = self.labels.synth_families.iter().position(|f| f == other)?;
                let mut v = vec![0f32; self.labels.synth_families.len()];
                v[i] = 1.0;
                Some(EncoderPath::Synthesizer(v))
            }
        }
    }

    /// Encodes preprocessed slices ([n, 3, crop, crop]) of one family; None
    /// for a family the models do not take. The daemon calls it as
    /// instances arrive, `analyze` for whatever was not encoded before.
    pub fn encode_slices(&self, family: &str, pixels: &ArrayF32) -> Result<Option<EncodedSlices>, AnalysisError> {
        match self.path_for(family) {
            Some(path) => self.encode_path(path, pixels).map(Some),
            None => Ok(None),
        }
    }

    fn encode_path(&self, path: EncoderPath, pixels: &ArrayF32) -> Result<EncodedSlices, AnalysisError> {
        let (model, onehot) = match &path {
            EncoderPath::T1 => (&self.encoder_t1, None),
            EncoderPath::T2 => (&self.encoder_t2, None),
            EncoderPath::Synthesizer(v) => (&self.synthesizer, Some(v.as_slice())),
        };
        let [cls, patches] = self.encode(model, pixels, onehot)?;
        // Recognition reads the T2 encoder's class token for every series.
        let rec_cls = if matches!(path, EncoderPath::T2) {
            cls.clone()
        } else {
            self.encode(&self.encoder_t2, pixels, None)?[0].clone()
        };
        let pixels = if self.slice_agents_read_pixels() {
            first_channel(pixels)
        } else {
            ArrayF32 {
                shape: vec![cls.shape[0], 1, 0, 0],
                data: Vec::new(),
            }
        };
        let mut encoded = EncodedSlices {
            cls,
            patches,
            rec_cls,
            pixels,
            agents: None,
        };
        // Slice agents whose results are small per slice run here, with the
        // encoders, so a slice encoded as it arrives needs nothing more
        // when its series completes.
        // The pixels are then read by nothing else: they are not kept.
        if self.series_pool_reads_maps() {
            encoded.agents = Some(self.slice_results(&encoded)?);
            encoded.pixels = ArrayF32 {
                shape: vec![encoded.len(), 1, 0, 0],
                data: Vec::new(),
            };
        }
        Ok(encoded)
    }

    /// Whether the bundle's series pool reads per-slice maps (0.6.0 on)
    /// rather than the whole segmentation.
    fn series_pool_reads_maps(&self) -> bool {
        !self.series_pool.spec.inputs.iter().any(|t| t.name == "segmentation")
    }

    /// The slice agents on a stack, in chunks, reduced to what the rest
    /// needs: recognition, argmax masks, and the series pool's input.
    fn slice_results(&self, encoded: &EncodedSlices) -> Result<SliceResults, AnalysisError> {
        let index = |name: &str| {
            self.output_index(&self.slice_agents, name)
                .ok_or_else(|| AnalysisError::Data(format!("slice_agents: no output {name:?}")))
        };
        let (seg_at, rec_at) = (index("segmentation")?, index("recognition")?);
        let maps = self.series_pool_reads_maps();
        let map_names: Vec<&str> = self
            .series_pool
            .spec
            .inputs
            .iter()
            .map(|t| t.name.as_str())
            .filter(|n| !matches!(*n, "cls" | "patches"))
            .collect();
        let map_at = map_names
            .iter()
            .map(|n| index(n).map(|i| (n.to_string(), i)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut parts = Vec::new();
        for start in (0..encoded.len()).step_by(CHUNK) {
            let chunk = slices::rows_range(encoded, start..(start + CHUNK).min(encoded.len()));
            let out = self.slice_agents.run(self.slice_agent_inputs(&chunk)?)?;
            let (lb, seg) = (&self.labels, &out[seg_at]);
            let masks = masks_of(seg, lb.anatomy, lb.lesion, lb.levels.len());
            if masks.len() != chunk.len() {
                return Err(AnalysisError::Data(format!(
                    "slice_agents: segmentation {:?} for {} slices",
                    seg.shape,
                    chunk.len()
                )));
            }
            let pool = if maps {
                PoolInput::Maps(map_at.iter().map(|(n, i)| (n.clone(), out[*i].clone())).collect())
            } else {
                PoolInput::Segmentation(seg.clone())
            };
            parts.push(SliceResults {
                recognition: out[rec_at].clone(),
                masks,
                pool,
            });
        }
        slices::join_results(parts)
            .ok_or_else(|| AnalysisError::Data("slice_agents: outputs differ in shape between slices".into()))
    }

    /// Axial stacks waiting for the series pool take each slice's level
    /// from where it crosses the sagittal stacks (`crossref`): the spine's
    /// mass in their `level_patches` and `level_cells` is spread over the
    /// levels the sagittal level masks show there. Stacks without a
    /// placement, or slices crossing no labelled sagittal pixel, keep the
    /// slice agents' own levels.
    fn cross_reference(&self, stacks: &mut [Stack]) {
        // Only for bundles trained on cross-referenced axial levels (0.7.0
        // on): earlier condition agents learned the slice agents' own.
        if !self.bundle.manifest.agents.contains_key(CROSS_REFERENCE_AGENT) {
            return;
        }
        let n_levels = self.labels.levels.len();
        let spec = &self.bundle.manifest.preprocess;
        let g = CropGeometry {
            resize: spec.resize,
            crop: spec.crop,
        };
        let sagittal: Vec<(&Placement, &[SliceMasks])> = stacks
            .iter()
            .filter(|s| s.input.plane == "sagittal")
            .filter_map(|s| Some((s.input.placement.as_ref()?, s.masks.as_slice())))
            .collect();
        if sagittal.is_empty() {
            return;
        }
        let shares: Vec<(usize, Vec<Option<Vec<f32>>>)> = stacks
            .iter()
            .enumerate()
            .filter(|(_, s)| s.input.plane == "axial" && matches!(s.pooling, Pooling::Pending { .. }))
            .filter_map(|(i, s)| {
                Some((
                    i,
                    crossref::axial_levels(s.input.placement.as_ref()?, &sagittal, g, n_levels),
                ))
            })
            .collect();
        for (i, per_slice) in shares {
            let Pooling::Pending { maps, .. } = &mut stacks[i].pooling else {
                continue;
            };
            for (name, probabilities) in maps.iter_mut() {
                if !matches!(name.as_str(), "level_patches" | "level_cells") || probabilities.shape.len() != 3 {
                    continue;
                }
                let per = probabilities.shape[1] * probabilities.shape[2];
                for (s, share) in per_slice.iter().enumerate() {
                    if let (Some(share), Some(slice)) = (share, probabilities.data.get_mut(s * per..(s + 1) * per)) {
                        crossref::relabel(slice, probabilities.shape[1], share);
                    }
                }
            }
        }
    }

    /// The series pool's inputs in manifest order, by name.
    fn series_pool_inputs(
        &self,
        cls: ArrayF32,
        patches: ArrayF32,
        pool: PoolInput,
    ) -> Result<Vec<ArrayF32>, AnalysisError> {
        let (mut cls, mut patches) = (Some(cls), Some(patches));
        let (mut segmentation, mut maps) = match pool {
            PoolInput::Segmentation(s) => (Some(s), Vec::new()),
            PoolInput::Maps(m) => (None, m),
        };
        self.series_pool
            .spec
            .inputs
            .iter()
            .map(|t| {
                let found = match t.name.as_str() {
                    "cls" => cls.take(),
                    "patches" => patches.take(),
                    "segmentation" => segmentation.take(),
                    other => maps.iter().position(|(n, _)| n == other).map(|i| maps.swap_remove(i).1),
                };
                found.ok_or_else(|| AnalysisError::Data(format!("series_pool: no input {:?}", t.name)))
            })
            .collect()
    }

    /// Whether the bundle's slice agents take a `pixels` input.
    fn slice_agents_read_pixels(&self) -> bool {
        self.slice_agents.spec.inputs.iter().any(|t| t.name == "pixels")
    }

    /// The slice agents' inputs in manifest order, by name.
    fn slice_agent_inputs(&self, encoded: &EncodedSlices) -> Result<Vec<ArrayF32>, AnalysisError> {
        self.slice_agents
            .spec
            .inputs
            .iter()
            .map(|t| match t.name.as_str() {
                "patches" => Ok(encoded.patches.clone()),
                "rec_cls" => Ok(encoded.rec_cls.clone()),
                "cls" => Ok(encoded.cls.clone()),
                "pixels" => Ok(encoded.pixels.clone()),
                other => Err(AnalysisError::Data(format!("slice_agents: unknown input {other:?}"))),
            })
            .collect()
    }

    /// `threshold`: one reporting threshold for every condition, or None for
    /// the bundle's per-condition thresholds (`[thresholds]`, else
    /// [`DEFAULT_THRESHOLD`]).
    pub fn analyze(&self, series: Vec<SeriesInput>, threshold: Option<f32>) -> Result<StudyAnalysis, AnalysisError> {
        let lb = &self.labels;
        let (n_slots, n_levels) = (lb.slots.len(), lb.levels.len());
        let mut width = 0;
        let mut slot_sum: Vec<f32> = Vec::new();
        let mut slot_mass = vec![0f32; n_slots * n_levels];
        let mut out_series = Vec::new();
        let mut slots = Vec::new();
        // Every slice's class token, for the report agent's projector.
        let mut slice_embeddings: Vec<f32> = Vec::new();
        let mut embedding_width = 0;
        // Pass 1: every stack's encodings and slice agents' results. A
        // bundle whose series pool reads whole logits pools each stack at
        // once (its logits are not kept); one that reads per-slice maps waits
        // for every stack, so that axial stacks can take their levels from
        // where they cross the sagittal ones.
        let mut stacks = Vec::new();
        for mut input in series {
            if input.pixels.shape.first().copied().unwrap_or(0) == 0 {
                continue;
            }
            let Some(path) = self.path_for(&input.family) else {
                continue; // a family the models do not take
            };
            let path_name = path.name();
            let mut encoded = match input.encoded.take() {
                Some(e) if e.len() == input.pixels.shape[0] => e,
                _ => self.encode_path(path, &input.pixels)?,
            };
            let results = match encoded.agents.take() {
                Some(r) if r.len() == encoded.len() => r,
                _ => self.slice_results(&encoded)?,
            };
            let EncodedSlices { cls, patches, .. } = encoded;
            if self.report_projector.is_some() {
                embedding_width = cls.shape.get(1).copied().unwrap_or(0);
                slice_embeddings.extend_from_slice(&cls.data);
            }
            let SliceResults {
                recognition,
                masks,
                pool,
            } = results;
            let pooling = match pool {
                PoolInput::Maps(maps) => Pooling::Pending { cls, patches, maps },
                whole => Pooling::Done(self.series_pool.run(self.series_pool_inputs(cls, patches, whole)?)?),
            };
            stacks.push(Stack {
                input,
                path: path_name,
                recognition,
                masks,
                pooling,
            });
        }
        self.cross_reference(&mut stacks);
        // Pass 2: the series pool where it waited, and the slots.
        for stack in stacks {
            let Stack {
                input,
                path: path_name,
                recognition,
                masks,
                pooling,
            } = stack;
            let pooled = match pooling {
                Pooling::Done(p) => p,
                Pooling::Pending { cls, patches, maps } => {
                    self.series_pool
                        .run(self.series_pool_inputs(cls, patches, PoolInput::Maps(maps))?)?
                }
            };
            let (emb, attention, feats, mass) = (&pooled[0], &pooled[1], &pooled[2], &pooled[3]);
            width = emb.data.len();
            if slot_sum.is_empty() {
                slot_sum = vec![0f32; n_slots * n_levels * width];
            }
            let slot = self.slot_of(&input.family, &input.plane);
            for v in 0..n_levels {
                let m = mass.data[v];
                slot_mass[slot * n_levels + v] += m;
                for d in 0..width {
                    slot_sum[(slot * n_levels + v) * width + d] += feats.data[v * width + d] * m;
                }
            }
            slots.push(slot);
            out_series.push(self.describe_series(input, path_name, &recognition, masks, attention, emb)?);
        }
        if out_series.is_empty() {
            return Err(AnalysisError::Data("no series the models can use".into()));
        }
        // Slot level features: mass-weighted mean over the slot's stacks.
        let mut level_features = vec![0f32; n_slots * n_levels * width];
        for (i, m) in slot_mass.iter().enumerate() {
            for d in 0..width {
                level_features[i * width + d] = slot_sum[i * width + d] / (m + 1e-3);
            }
        }
        let slot_mask: Vec<f32> = (0..n_slots)
            .map(|s| {
                let total: f32 = slot_mass[s * n_levels..(s + 1) * n_levels].iter().sum();
                if total > 0.0 { 1.0 } else { 0.0 }
            })
            .collect();
        let k = out_series.len();
        let mut series_data = Vec::with_capacity(k * width);
        let mut slot_onehot = vec![0f32; k * n_slots];
        for (i, s) in out_series.iter().enumerate() {
            series_data.extend_from_slice(&s.embedding);
            slot_onehot[i * n_slots + slots[i]] = 1.0;
        }
        let patient = self.patient.run(vec![
            ArrayF32 {
                shape: vec![1, k, width],
                data: series_data,
            },
            ArrayF32 {
                shape: vec![1, k, n_slots],
                data: slot_onehot,
            },
            ArrayF32 {
                shape: vec![1, k],
                data: vec![1.0; k],
            },
        ])?;
        let conditions = self.conditions.run(vec![
            ArrayF32 {
                shape: vec![1, n_slots, n_levels, width],
                data: level_features,
            },
            ArrayF32 {
                shape: vec![1, n_slots],
                data: slot_mask,
            },
        ])?;
        // Positions whose vertebrae the level segmentation found.
        let level_total: Vec<f32> = (0..n_levels)
            .map(|v| (0..n_slots).map(|s| slot_mass[s * n_levels + v]).sum())
            .collect();
        let best = level_total.iter().skip(1).copied().fold(0f32, f32::max);
        let covered: Vec<usize> = (0..lb.positions.len())
            .filter(|&p| {
                let parts: Vec<&str> = lb.positions[p].split('-').collect();
                parts.iter().all(|v| {
                    lb.levels
                        .iter()
                        .position(|l| l == v)
                        .is_some_and(|i| i > 0 && level_total[i] >= MIN_LEVEL_SHARE * best)
                })
            })
            .collect();
        let (findings, probabilities, graded) = self.read_conditions(&conditions, &covered, threshold);
        // The query: the condition agents' retrieval embedding where the
        // bundle has one (0.5.0 on), else the patient embedding's projection;
        // the bundle's index is in the same space.
        let query = match self.output_index(&self.conditions, "retrieval") {
            Some(i) => &conditions[i].data,
            None => &patient[1].data,
        };
        let similar_cases = self.similar(query, 3);
        let mut analysis = StudyAnalysis {
            synthetic_model: true,
            bundle: format!("{} {}", self.bundle.manifest.name, self.bundle.manifest.version),
            series: out_series,
            levels_covered: covered.iter().map(|&p| lb.positions[p].clone()).collect(),
            findings,
            graded,
            similar_cases,
            patient_embedding: patient[0].data.clone(),
            probabilities,
            structured_tokens: String::new(),
            visual_tokens: None,
            slice_embeddings: None,
            seconds: 0.0,
        };
        analysis.structured_tokens = structured_tokens(&analysis);
        if self.report_projector.is_some() && embedding_width > 0 && !slice_embeddings.is_empty() {
            let slices = ArrayF32 {
                shape: vec![slice_embeddings.len() / embedding_width, embedding_width],
                data: slice_embeddings,
            };
            analysis.visual_tokens = self.visual_tokens(&slices)?;
            analysis.slice_embeddings = Some(slices);
        }
        Ok(analysis)
    }

    /// The projector over the study's slice embeddings [slices, width].
    fn visual_tokens(&self, slices: &ArrayF32) -> Result<Option<ArrayF32>, AnalysisError> {
        let Some(projector) = &self.report_projector else {
            return Ok(None);
        };
        let out = projector.run(vec![slices.clone()])?;
        Ok(out.into_iter().next())
    }

    fn describe_series(
        &self,
        input: SeriesInput,
        path: &str,
        rec: &ArrayF32,
        masks: Vec<SliceMasks>,
        attention: &ArrayF32,
        emb: &ArrayF32,
    ) -> Result<SeriesAnalysis, AnalysisError> {
        let lb = &self.labels;
        let s = rec.shape[0];
        let width = rec.shape[1];
        let (nf, np) = (lb.families.len(), lb.planes.len());
        if width != nf + np + lb.regions.len() {
            return Err(AnalysisError::Data(
                "recognition output does not match the label maps".into(),
            ));
        }
        // Mean of per-slice probabilities over the series.
        let mut fam = vec![0f32; nf];
        let mut plane = vec![0f32; np];
        let mut region = vec![0f32; lb.regions.len()];
        for i in 0..s {
            let row = &rec.data[i * width..(i + 1) * width];
            for (acc, p) in [
                (&mut fam, softmax(&row[..nf])),
                (&mut plane, softmax(&row[nf..nf + np])),
                (&mut region, softmax(&row[nf + np..])),
            ] {
                for (a, v) in acc.iter_mut().zip(p) {
                    *a += v / s as f32;
                }
            }
        }
        let (fi, fp) = argmax(&fam);
        let (pi, pp) = argmax(&plane);
        let (ri, rp) = argmax(&region);
        let tags_disagree = lb.families[fi] != input.family || lb.planes[pi] != input.plane;
        let (key, _) = argmax(&attention.data);
        Ok(SeriesAnalysis {
            key_slice: (key, input.sop_instance_uids.get(key).cloned().unwrap_or_default()),
            rows: input.rows,
            cols: input.cols,
            sop_instance_uids: input.sop_instance_uids.clone(),
            series_instance_uid: input.series_instance_uid,
            description: input.description,
            family: input.family,
            plane: input.plane,
            path: path.to_string(),
            recognized_family: (lb.families[fi].clone(), fp),
            recognized_plane: (lb.planes[pi].clone(), pp),
            recognized_region: (lb.regions[ri].clone(), rp),
            tags_disagree,
            attention: attention.data.clone(),
            embedding: emb.data.clone(),
            masks,
        })
    }

    #[allow(clippy::type_complexity)]
    fn read_conditions(
        &self,
        out: &[ArrayF32],
        covered: &[usize],
        threshold: Option<f32>,
    ) -> (Vec<Finding>, Vec<(String, String, f32)>, Vec<GradedLevel>) {
        let lb = &self.labels;
        let nc = lb.conditions.len();
        let ng = lb.graded.len();
        let (presence, side, severity, graded) = (&out[0].data, &out[1].data, &out[2].data, &out[3].data);
        let mut findings = Vec::new();
        let mut probabilities = Vec::new();
        for &p in covered {
            let is_disc = lb.positions[p].contains('-');
            for c in 0..nc {
                if (lb.condition_kinds.get(c).map(String::as_str) == Some("disc")) != is_disc {
                    continue; // a disc condition at a vertebra, or the reverse
                }
                let prob = presence[p * nc + c];
                probabilities.push((lb.positions[p].clone(), lb.conditions[c].clone(), prob));
                let cut = threshold.unwrap_or_else(|| {
                    self.bundle
                        .manifest
                        .thresholds
                        .get(&lb.conditions[c])
                        .copied()
                        .unwrap_or(DEFAULT_THRESHOLD)
                });
                if prob < cut {
                    continue;
                }
                let at = (p * nc + c) * 3;
                let (si, sp) = argmax(&side[at..at + 3]);
                let (vi, vp) = argmax(&severity[at..at + 3]);
                findings.push(Finding {
                    condition: lb.conditions[c].clone(),
                    level: lb.positions[p].clone(),
                    probability: prob,
                    side: lb.sides[si].clone(),
                    side_probability: sp,
                    severity: lb.severities[vi].clone(),
                    severity_probability: vp,
                });
            }
        }
        findings.sort_by(|a, b| b.probability.total_cmp(&a.probability));
        let graded = lb
            .lumbar_discs
            .iter()
            .filter_map(|d| {
                let p = lb.positions.iter().position(|x| x == d)?;
                if !covered.contains(&p) {
                    return None;
                }
                let grades = (0..ng)
                    .map(|g| {
                        let at = (p * ng + g) * 3;
                        (lb.graded[g].clone(), [graded[at], graded[at + 1], graded[at + 2]])
                    })
                    .collect();
                Some(GradedLevel {
                    level: d.clone(),
                    grades,
                })
            })
            .collect();
        (findings, probabilities, graded)
    }

    /// Where the model's output `name` is among its outputs, if it has one.
    fn output_index(&self, model: &Model, name: &str) -> Option<usize> {
        model.spec.outputs.iter().position(|t| t.name == name)
    }

    /// Nearest reference cases by cosine similarity (both sides unit vectors).
    fn similar(&self, query: &[f32], k: usize) -> Vec<SimilarCase> {
        let dim = query.len();
        if dim == 0 {
            return Vec::new();
        }
        let mut scored: Vec<(usize, f32)> = self
            .index
            .data
            .chunks(dim)
            .enumerate()
            .map(|(i, row)| (i, row.iter().zip(query).map(|(a, b)| a * b).sum()))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored
            .into_iter()
            .take(k)
            .map(|(i, s)| SimilarCase {
                case: self.cases[i].case.clone(),
                similarity: s,
                report: self.cases[i].report.clone(),
            })
            .collect()
    }
}
