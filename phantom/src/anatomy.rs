//! The subject: a whole spine from C2 to S1 in patient coordinates (DICOM
//! LPS, mm: +x patient left, +y posterior, +z head), built from analytic
//! primitives in each vertebra's local frame, with the subject's findings
//! applied where they sit. [`Subject::voxel`] answers "what is at this
//! point" for the renderer.

use serde::Serialize;

use crate::findings::{Condition, Finding, Severity, Side, Subtype};
use crate::levels::{DISCS, VERTEBRAE, disc_index, vertebra_index};
use crate::rng::Rng;
use crate::tissue::{Anatomy, Lesion, Material, Voxel};

pub type V3 = [f64; 3];

pub fn add(a: V3, b: V3) -> V3 {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}
pub fn sub(a: V3, b: V3) -> V3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
pub fn scale(a: V3, k: f64) -> V3 {
    [a[0] * k, a[1] * k, a[2] * k]
}
pub fn dot(a: V3, b: V3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
pub fn cross(a: V3, b: V3) -> V3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}
pub fn unit(a: V3) -> V3 {
    let l = dot(a, a).sqrt();
    scale(a, 1.0 / l)
}

/// One vertebra with the disc below it (the last, S1, has none).
#[derive(Debug, Clone, Serialize)]
pub struct Level {
    pub name: &'static str,
    /// Centre of the vertebral body.
    pub center: V3,
    /// Unit axis along the spine, pointing to the head.
    pub axis: V3,
    /// Unit posterior direction, perpendicular to the axis and to x.
    pub posterior: V3,
    /// Body width (left-right), depth (anterior-posterior), height.
    pub body: [f64; 3],
    /// Height of the disc below this vertebra (0 for S1).
    pub disc_below: f64,
    /// Canal width and depth.
    pub canal: [f64; 2],
    pub pedicle_width: f64,
    /// Body outline half-axes (left-right, anterior-posterior) and how far
    /// its posterior edge lies behind the canal.
    pub outline: [f64; 3],
    pub fat_thickness: f64,
}

/// Findings resolved to what the geometry needs at one disc.
#[derive(Debug, Clone, Default)]
struct DiscEffects {
    canal_narrowing: f64,
    cord_compression: f64,
    foraminal: [f64; 2],
    subarticular: [f64; 2],
    herniation: Option<(Subtype, f64, f64)>,
    synovial: Option<f64>,
    degeneration: f64,
    inflamed: bool,
    lipomatosis: f64,
    cord_lesion: bool,
    listhesis: bool,
    height_loss: bool,
}

/// Findings at one vertebra.
#[derive(Debug, Clone, Default)]
struct VertebraEffects {
    edema: bool,
    hemangioma: Option<(V3, f64)>,
    tumor: Option<(V3, f64)>,
    fracture: Option<(f64, bool)>,
    pars_defect: bool,
    perineural_cyst: Option<(f64, f64)>,
}

pub struct Subject {
    pub levels: Vec<Level>,
    pub findings: Vec<Finding>,
    /// The conus medullaris tip, as a position along L1-L2 in [0, 1] of
    /// the span from the middle of L1 to the middle of L2.
    pub conus_tip: V3,
    discs: Vec<DiscEffects>,
    vertebrae: Vec<VertebraEffects>,
}

fn severity_fraction(s: Severity) -> f64 {
    match s {
        Severity::Mild => 0.3,
        Severity::Moderate => 0.55,
        Severity::Severe => 0.78,
    }
}

fn side_index(side: Option<Side>) -> Vec<usize> {
    match side {
        Some(Side::Left) => vec![0],
        Some(Side::Right) => vec![1],
        Some(Side::Bilateral) => vec![0, 1],
        _ => vec![],
    }
}

/// Typical dimensions per vertebra index (cervical, thoracic, lumbar).
fn base_dimensions(k: usize) -> ([f64; 3], f64, [f64; 2], f64, [f64; 2]) {
    // (body W, D, H), disc height below, canal (width, depth), pedicle width, outline (rx, ry)
    let t = k as f64;
    if k <= 5 {
        (
            [17.0 + 0.6 * t, 15.5 + 0.2 * t, 13.5],
            5.0,
            [24.0, 14.0],
            5.0,
            [58.0, 60.0],
        )
    } else if k <= 17 {
        let u = (k - 6) as f64 / 11.0;
        (
            [25.0 + 12.0 * u, 21.0 + 9.0 * u, 17.0 + 6.0 * u],
            4.0 + 2.5 * u,
            [17.0 + 3.0 * u, 15.0 + 1.0 * u],
            7.0,
            [145.0 + 10.0 * u, 105.0 + 5.0 * u],
        )
    } else {
        let u = (k - 18) as f64 / 5.0;
        let disc = if k == 22 {
            10.0
        } else if k == 23 {
            0.0
        } else {
            10.5 + 1.5 * u
        };
        (
            [42.0 + 6.0 * u, 31.0 + 3.0 * u, 26.5 + 1.5 * u],
            disc,
            [22.0 + 2.0 * u, 17.0],
            8.5,
            [160.0, 115.0],
        )
    }
}

impl Subject {
    /// Builds a subject: size, curvature and findings from `rng`.
    pub fn build(rng: &mut Rng, findings: Vec<Finding>) -> Subject {
        let size = rng.range(0.9, 1.1);
        let lordosis_c = rng.range(6.0, 16.0);
        let kyphosis_t = rng.range(18.0, 38.0);
        let lordosis_l = rng.range(14.0, 28.0);
        // Subcutaneous fat: one thickness for the neck, one for the trunk.
        let neck_fat = rng.range(4.0, 14.0);
        let trunk_fat = rng.range(8.0, 30.0);
        let slip: Vec<(usize, f64)> = findings
            .iter()
            .filter(|f| f.condition == Condition::Spondylolisthesis)
            .filter_map(|f| disc_index(&f.level).map(|d| (d, 0.12 + 0.14 * f.severity.index() as f64)))
            .collect();
        let height_loss: Vec<(usize, f64)> = findings
            .iter()
            .filter(|f| f.condition == Condition::DiscHeightLoss)
            .filter_map(|f| disc_index(&f.level).map(|d| (d, 1.0 - severity_fraction(f.severity) * 0.75)))
            .collect();

        // Walk down from C2 along a smooth sagittal curve: y(z) bows
        // anteriorly (-y) in the cervical and lumbar spine, posteriorly in
        // the thoracic spine.
        let dims: Vec<_> = (0..VERTEBRAE.len()).map(base_dimensions).collect();
        let total: f64 = dims.iter().map(|d| (d.0[2] + d.1) * size).sum();
        let top_z = total * 0.55;
        let bump = |s: f64, a: f64, b: f64| {
            if s <= a || s >= b {
                0.0
            } else {
                (std::f64::consts::PI * (s - a) / (b - a)).sin()
            }
        };
        let cerv_end = dims[..6].iter().map(|d| d.0[2] + d.1).sum::<f64>() * size;
        let thor_end = cerv_end + dims[6..18].iter().map(|d| d.0[2] + d.1).sum::<f64>() * size;
        let y_of = |s: f64| {
            -lordosis_c * bump(s, -10.0, cerv_end + 10.0) + kyphosis_t * bump(s, cerv_end, thor_end)
                - lordosis_l * bump(s, thor_end, total + 15.0)
        };
        let mut levels = Vec::with_capacity(VERTEBRAE.len());
        let mut s = 0.0;
        for (k, name) in VERTEBRAE.iter().enumerate() {
            let (body0, disc0, canal0, pedicle, outline) = dims[k];
            let body = [body0[0] * size, body0[1] * size, body0[2] * size];
            let mut disc = disc0 * size;
            if let Some((_, f)) = height_loss.iter().find(|(d, _)| *d == k) {
                disc *= f;
            }
            let centre_s = s + body[2] / 2.0;
            let y = y_of(centre_s);
            let dy = (y_of(centre_s + 1.0) - y_of(centre_s - 1.0)) / 2.0;
            let axis = unit([0.0, -dy, 1.0]);
            let posterior = unit(cross(axis, [1.0, 0.0, 0.0]));
            let posterior = if posterior[1] < 0.0 {
                scale(posterior, -1.0)
            } else {
                posterior
            };
            // Anterolisthesis: everything above the slipped disc moves forward.
            let here_shift = slip
                .iter()
                .filter(|(d, _)| *d >= k)
                .map(|(_, f)| f * body[1])
                .sum::<f64>();
            let center = add([0.0, y - here_shift, top_z - centre_s], [0.0, 0.0, 0.0]);
            levels.push(Level {
                name,
                center,
                axis,
                posterior,
                body,
                disc_below: if k + 1 < VERTEBRAE.len() { disc } else { 0.0 },
                canal: [canal0[0] * size, canal0[1] * size],
                pedicle_width: pedicle * size,
                outline: [
                    outline[0] * size,
                    outline[1] * size,
                    if k <= 5 { 42.0 } else { 58.0 } * size,
                ],
                fat_thickness: if k <= 5 { neck_fat } else { trunk_fat },
            });
            s += body[2] + disc;
        }
        let l1 = &levels[vertebra_index("L1").unwrap()];
        let l2 = &levels[vertebra_index("L2").unwrap()];
        let t = rng.range(0.2, 0.8);
        let conus_tip = add(scale(l1.center, 1.0 - t), scale(l2.center, t));
        let mut subject = Subject {
            levels,
            findings: Vec::new(),
            conus_tip,
            discs: vec![DiscEffects::default(); DISCS.len()],
            vertebrae: vec![VertebraEffects::default(); VERTEBRAE.len()],
        };
        for f in findings {
            subject.apply(rng, &f);
            subject.findings.push(f);
        }
        subject
    }

    fn apply(&mut self, rng: &mut Rng, f: &Finding) {
        let frac = severity_fraction(f.severity);
        if let Some(d) = disc_index(&f.level) {
            let e = &mut self.discs[d];
            match f.condition {
                Condition::CanalStenosis => e.canal_narrowing = e.canal_narrowing.max(frac),
                Condition::CordCompression => {
                    e.cord_compression = frac;
                    e.canal_narrowing = e.canal_narrowing.max(0.8);
                }
                Condition::ForaminalStenosis => {
                    for i in side_index(f.side) {
                        e.foraminal[i] = frac;
                    }
                }
                Condition::SubarticularStenosis => {
                    for i in side_index(f.side) {
                        e.subarticular[i] = frac;
                    }
                }
                Condition::Herniation => {
                    let side = f.side.unwrap_or(Side::Central);
                    // Central, paracentral (left/right of midline) or foraminal
                    // for severe ones that reach the foramen.
                    let offset = match side {
                        Side::Central | Side::Bilateral => 0.0,
                        s => s.sign() * if f.severity == Severity::Severe { 0.55 } else { 0.3 },
                    };
                    e.herniation = Some((f.subtype.unwrap_or(Subtype::Protrusion), offset, frac));
                }
                Condition::SynovialCyst => e.synovial = Some(f.side.unwrap_or(Side::Left).sign() * rng.range(0.9, 1.0)),
                Condition::DiscDegeneration => e.degeneration = frac,
                Condition::DiscHeightLoss => {
                    e.height_loss = true;
                    e.degeneration = e.degeneration.max(0.6);
                }
                Condition::Inflammation => e.inflamed = true,
                Condition::Lipomatosis => e.lipomatosis = 0.25 + 0.3 * f.severity.index() as f64,
                Condition::CordSignal => e.cord_lesion = true,
                Condition::Spondylolisthesis => e.listhesis = true,
                _ => {}
            }
            if f.condition == Condition::Lipomatosis {
                // Epidural fat accumulates over the levels above as well.
                for up in 1..=2 {
                    if d >= up {
                        let l = self.discs[d - up]
                            .lipomatosis
                            .max(0.6 * (0.25 + 0.3 * f.severity.index() as f64));
                        self.discs[d - up].lipomatosis = l;
                    }
                }
            }
        } else if let Some(v) = vertebra_index(&f.level) {
            let [w, dd, h] = self.levels[v].body;
            let e = &mut self.vertebrae[v];
            let spot = |rng: &mut Rng, r: f64| -> (V3, f64) {
                (
                    [
                        rng.range(-0.25, 0.25) * w,
                        rng.range(-0.2, 0.2) * dd,
                        rng.range(-0.15, 0.15) * h,
                    ],
                    r,
                )
            };
            match f.condition {
                Condition::MarrowEdema => e.edema = true,
                Condition::Hemangioma => {
                    let r = rng.range(4.0, 6.0) + 2.5 * f.severity.index() as f64;
                    e.hemangioma = Some(spot(rng, r))
                }
                Condition::MarrowLesion => {
                    let r = rng.range(6.0, 8.0) + 3.0 * f.severity.index() as f64;
                    e.tumor = Some(spot(rng, r))
                }
                Condition::CompressionFracture => {
                    e.fracture = Some((
                        0.15 + 0.15 * f.severity.index() as f64,
                        f.subtype != Some(Subtype::Chronic),
                    ))
                }
                Condition::ParsDefect => e.pars_defect = true,
                Condition::PerineuralCyst => {
                    e.perineural_cyst = Some((
                        f.side.unwrap_or(Side::Left).sign(),
                        4.0 + 2.0 * f.severity.index() as f64,
                    ))
                }
                _ => {}
            }
        }
    }

    /// The level whose segment (body plus half of each neighbouring disc)
    /// holds `q`, with `q`'s local coordinates (x, posterior, along axis).
    fn locate(&self, q: V3) -> (usize, [f64; 3]) {
        let mut best = (0usize, [0.0; 3], f64::INFINITY);
        for (k, l) in self.levels.iter().enumerate() {
            if (q[2] - l.center[2]).abs() > 70.0 {
                continue;
            }
            let r = sub(q, l.center);
            let local = [r[0], dot(r, l.posterior), dot(r, l.axis)];
            let above = if k > 0 { self.levels[k - 1].disc_below } else { 40.0 };
            let half_up = l.body[2] / 2.0 + above / 2.0;
            let half_down =
                l.body[2] / 2.0 + l.disc_below.max(if k + 1 == self.levels.len() { 40.0 } else { 0.0 }) / 2.0;
            let excess = if local[2] > half_up {
                local[2] - half_up
            } else if local[2] < -half_down {
                -half_down - local[2]
            } else {
                0.0
            };
            let score = excess * 1000.0 + local[2].abs();
            if score < best.2 {
                best = (k, local, score);
            }
        }
        (best.0, best.1)
    }

    /// What is at `q`.
    pub fn voxel(&self, q: V3) -> Voxel {
        self.voxel_and_level(q).0
    }

    /// What is at `q`, and the vertebra whose segment holds it.
    pub fn voxel_and_level(&self, q: V3) -> (Voxel, usize) {
        let (k, local) = self.locate(q);
        (self.voxel_in(k, local, q), k)
    }

    fn voxel_in(&self, k: usize, [x, a, z]: [f64; 3], q: V3) -> Voxel {
        let l = &self.levels[k];
        let [w, d, h] = l.body;
        let [cw, ca] = l.canal;
        let canal_a = d / 2.0 + 1.0 + ca / 2.0;

        // Skin and subcutaneous fat (the trunk or neck around the spine),
        // blended towards the neighbouring level so the outline is smooth.
        let neighbour = if z > 0.0 {
            k.checked_sub(1)
        } else {
            Some(k + 1).filter(|n| *n < self.levels.len())
        };
        let (outline, fat) = match neighbour {
            Some(n) => {
                let t = (z.abs() / (h / 2.0 + 4.0)).clamp(0.0, 1.0) * 0.5;
                let o = &self.levels[n];
                let lerp = |p: f64, q: f64| p * (1.0 - t) + q * t;
                (
                    [
                        lerp(l.outline[0], o.outline[0]),
                        lerp(l.outline[1], o.outline[1]),
                        lerp(l.outline[2], o.outline[2]),
                    ],
                    lerp(l.fat_thickness, o.fat_thickness),
                )
            }
            None => (l.outline, l.fat_thickness),
        };
        let [rx, ry, behind] = outline;
        let post_edge = canal_a + ca / 2.0 + behind;
        let cy = post_edge - ry;
        let r_out = ((x / rx).powi(2) + ((a - cy) / ry).powi(2)).sqrt();
        if r_out > 1.0 {
            return Voxel::AIR;
        }
        if r_out > 1.0 - fat / ry && a > cy - ry * 0.3 {
            return Voxel::new(Material::Fat, Anatomy::SubcutaneousFat);
        }

        // Which disc is nearest, and where along it (zd = 0 at its middle).
        let (disc, zd, disc_h) = if z < 0.0 && l.disc_below > 0.0 {
            (Some(k), z + h / 2.0 + l.disc_below / 2.0, l.disc_below)
        } else if k > 0 {
            let hd = self.levels[k - 1].disc_below;
            (Some(k - 1), z - h / 2.0 - hd / 2.0, hd)
        } else {
            (None, 1e9, 1.0)
        };
        let de = disc.map(|i| &self.discs[i]);
        let ve = &self.vertebrae[k];
        let in_disc_zone = z.abs() > h / 2.0 && disc.is_some() && zd.abs() <= disc_h / 2.0;
        // Weight of disc-level effects: 1 across the disc, fading over the body.
        let wdisc = if disc.is_some() {
            (-(zd / (disc_h * 0.9 + 3.0)).powi(2)).exp()
        } else {
            0.0
        };

        // Herniated disc material pushes into the canal (or foramen).
        if let Some(e) = de
            && let Some((kind, offset, frac)) = e.herniation
        {
            let (rxh, rah, rzh, reach) = match kind {
                Subtype::Bulge => (w * 0.45, 2.0 + 2.0 * frac, disc_h * 0.45, 1.0 + 2.0 * frac),
                Subtype::Protrusion => (4.0 + 3.0 * frac, 3.0 + 4.0 * frac, disc_h * 0.45, 2.0 + 4.0 * frac),
                _ => (
                    5.0 + 3.0 * frac,
                    4.0 + 6.0 * frac,
                    disc_h * 0.6 + 4.0 * frac,
                    3.0 + 7.0 * frac,
                ),
            };
            let hz = if kind == Subtype::Extrusion {
                zd + 2.5 * frac * rzh * 0.5
            } else {
                zd
            };
            let cx = offset * cw / 2.0;
            let ca0 = d / 2.0 + reach - rah;
            let v = ((x - cx) / rxh).powi(2) + ((a - ca0) / rah).powi(2) + (hz / rzh).powi(2);
            if v <= 1.0 && a > d / 2.0 - 2.0 {
                return Voxel::new(Material::DegeneratedNucleus, Anatomy::DiscAnnulus)
                    .with_lesion(Material::DegeneratedNucleus, Lesion::Herniation);
            }
        }

        // Canal and contents.
        let in_canal = (x / (cw / 2.0)).powi(2) + ((a - canal_a) / (ca / 2.0)).powi(2) <= 1.0;
        if in_canal {
            return self.canal(k, x, a - canal_a, z, q, de, wdisc, ve);
        }

        // Vertebral body and disc.
        let in_body_ellipse = (x / (w / 2.0)).powi(2) + (a / (d / 2.0)).powi(2) <= 1.0;
        if in_body_ellipse && z.abs() <= h / 2.0 {
            return self.body(k, x, a, z, de, disc_h);
        }
        if in_disc_zone && (x / (w / 2.0 * 1.02)).powi(2) + (a / (d / 2.0 * 1.02)).powi(2) <= 1.0 {
            let e = de.expect("disc zone has a disc");
            let nucleus =
                (x / (w * 0.27)).powi(2) + ((a - 0.05 * d) / (d * 0.23)).powi(2) + (zd / (disc_h * 0.36)).powi(2)
                    <= 1.0;
            let base = if nucleus {
                Voxel::new(Material::Nucleus, Anatomy::DiscNucleus)
            } else {
                Voxel::new(Material::Annulus, Anatomy::DiscAnnulus)
            };
            if e.inflamed {
                return base.with_lesion(Material::InflamedDisc, Lesion::Discitis);
            }
            if nucleus && e.degeneration > 0.0 {
                let m = if e.degeneration > 0.5 {
                    Material::DegeneratedNucleus
                } else {
                    Material::Annulus
                };
                return base.with_lesion(m, Lesion::DegeneratedDisc);
            }
            if e.height_loss {
                return base.with_lesion(base.material, Lesion::DegeneratedDisc);
            }
            if e.listhesis && a > d * 0.25 {
                return base.with_lesion(base.material, Lesion::Listhesis);
            }
            return base;
        }

        // Posterior elements, foramina and nerve roots.
        if let Some(v) = self.posterior(k, x, a, z, canal_a, de, zd, disc_h, wdisc, ve) {
            return v;
        }

        // Paraspinal muscles.
        let mdx = cw / 2.0 + 14.0 + w * 0.15;
        let mda = canal_a + ca / 2.0 + 18.0 + if k <= 5 { 0.0 } else { 6.0 };
        let (mrx, mra) = if k <= 5 { (11.0, 14.0) } else { (17.0 + 0.1 * w, 22.0) };
        if ((x.abs() - mdx) / mrx).powi(2) + ((a - mda) / mra).powi(2) <= 1.0 {
            return Voxel::new(Material::Muscle, Anatomy::Muscle);
        }
        Voxel::new(Material::SoftTissue, Anatomy::SoftTissue)
    }

    #[allow(clippy::too_many_arguments)]
    fn canal(
        &self,
        k: usize,
        x: f64,
        ac: f64,
        z: f64,
        q: V3,
        de: Option<&DiscEffects>,
        wdisc: f64,
        ve: &VertebraEffects,
    ) -> Voxel {
        let l = &self.levels[k];
        let [cw, ca] = l.canal;
        // Thecal sac half-axes, narrowed by stenosis, lipomatosis, cord compression.
        let (sw0, sa0) = (0.8 * cw / 2.0, 0.78 * ca / 2.0);
        let mut sw = sw0;
        let mut sa = sa0;
        let sac_c = 0.05 * ca;
        let mut narrowed = None;
        if let Some(e) = de {
            if e.canal_narrowing > 0.0 {
                // Whatever the sac loses here is labelled, however little.
                narrowed = Some(if e.cord_compression > 0.0 {
                    Lesion::CordCompression
                } else {
                    Lesion::CanalStenosis
                });
                sa *= 1.0 - e.canal_narrowing * wdisc;
            }
            if e.lipomatosis > 0.0 {
                let f = 1.0 - e.lipomatosis * (0.6 + 0.4 * wdisc);
                sa *= f;
                sw *= 1.0 - 0.5 * e.lipomatosis;
            }
        }
        let side = if x >= 0.0 { 0 } else { 1 };
        let mut sw_side = sw;
        let sub_frac = de.map(|e| e.subarticular[side]).unwrap_or(0.0);
        if sub_frac > 0.0 {
            sw_side *= 1.0 - 0.55 * sub_frac * wdisc;
        }
        let in_sac = (x / sw_side).powi(2) + ((ac - sac_c) / sa).powi(2) <= 1.0;
        let in_unnarrowed_sac = (x / (0.8 * cw / 2.0)).powi(2) + ((ac - sac_c) / (0.78 * ca / 2.0)).powi(2) <= 1.0;

        // Facet synovial cyst: fluid posterolateral in the canal.
        if let Some(e) = de
            && let Some(sign) = e.synovial
        {
            let c = [sign * sw * 0.85, sac_c + sa * 0.75];
            let r = 4.5;
            let zd_c = wdisc;
            if ((x - c[0]).powi(2) + (ac - c[1]).powi(2)).sqrt() <= r && zd_c > 0.55 {
                return Voxel::new(Material::Cyst, Anatomy::EpiduralFat)
                    .with_lesion(Material::Cyst, Lesion::SynovialCyst);
            }
        }
        // Perineural (Tarlov) cyst at the sacrum, lateral in the canal.
        if let Some((sign, r)) = ve.perineural_cyst {
            let c = [sign * (sw * 0.7), sac_c + 1.0, -l.body[2] * 0.15];
            let dist = ((x - c[0]).powi(2) + (ac - c[1]).powi(2) + ((z - c[2]) * 0.7).powi(2)).sqrt();
            if dist <= r {
                return Voxel::new(Material::Cyst, Anatomy::NerveRoot)
                    .with_lesion(Material::Cyst, Lesion::PerineuralCyst);
            }
        }
        if !in_sac {
            let base = Voxel::new(Material::Fat, Anatomy::EpiduralFat);
            if in_unnarrowed_sac {
                // What took the sac's place: disc and ligament in stenosis,
                // fat in lipomatosis.
                if let Some(lesion) = narrowed {
                    let m = if ac < sac_c {
                        Material::Annulus
                    } else {
                        Material::Ligament
                    };
                    return base.with_lesion(m, lesion);
                }
                if sub_frac > 0.0 && (x / sw).powi(2) + ((ac - sac_c) / sa).powi(2) <= 1.0 {
                    return base.with_lesion(Material::Ligament, Lesion::SubarticularStenosis);
                }
                if de.is_some_and(|e| e.lipomatosis > 0.0) {
                    return base.with_lesion(Material::Fat, Lesion::Lipomatosis);
                }
            }
            return base;
        }

        // Inside the thecal sac: cord above the conus, cauda equina below.
        let along = dot(sub(q, self.conus_tip), l.axis);
        let (mut crx, mut cra) = if k <= 6 { (6.0, 4.2) } else { (4.4, 3.8) };
        if along < 20.0 {
            let t = (along / 20.0).clamp(0.0, 1.0);
            crx *= t.sqrt();
            cra *= t.sqrt();
        }
        let (crx0, cra0) = (crx, cra);
        let mut compressed = false;
        if let Some(e) = de
            && e.cord_compression > 0.0
        {
            compressed = true;
            cra *= 1.0 - 0.5 * e.cord_compression * wdisc;
            crx *= 1.0 + 0.2 * e.cord_compression * wdisc;
        }
        let cord_c = sac_c - 0.5;
        let in_cord = |rx: f64, ra: f64| along > 0.0 && (x / rx).powi(2) + ((ac - cord_c) / ra).powi(2) <= 1.0;
        if compressed && in_cord(crx, cra) != in_cord(crx0, cra0) {
            // The flattened cord's changed outline.
            let (m, a) = if in_cord(crx, cra) {
                (Material::Cord, Anatomy::Cord)
            } else {
                (Material::Csf, Anatomy::Csf)
            };
            return Voxel::new(m, a).with_lesion(m, Lesion::CordCompression);
        }
        if in_cord(crx, cra) {
            let cord = Voxel::new(Material::Cord, Anatomy::Cord);
            if let Some(e) = de
                && e.cord_lesion
                && wdisc > 0.5
                && (x / (crx * 0.55)).powi(2) + ((ac - cord_c) / (cra * 0.6)).powi(2) <= 1.0
            {
                return cord.with_lesion(Material::CordLesion, Lesion::CordSignal);
            }
            return cord;
        }
        if along <= 0.0 {
            // Cauda equina: roots in the dependent (posterior) half of the sac.
            for i in 0..6 {
                // Placed in the unnarrowed sac: a stenosis hides roots, it
                // does not move them.
                let rx = (i as f64 - 2.5) * sw0 * 0.28;
                let ra = sac_c + sa0 * 0.35 + ((i % 2) as f64) * 1.8;
                if (x - rx).powi(2) + (ac - ra).powi(2) <= 1.1 * 1.1 {
                    return Voxel::new(Material::Nerve, Anatomy::NerveRoot);
                }
            }
        }
        Voxel::new(Material::Csf, Anatomy::Csf)
    }

    fn body(&self, k: usize, x: f64, a: f64, z: f64, de: Option<&DiscEffects>, _disc_h: f64) -> Voxel {
        let l = &self.levels[k];
        let [w, d, h] = l.body;
        let ve = &self.vertebrae[k];
        let mut top = h / 2.0;
        if let Some((loss, _)) = ve.fracture {
            // Anterior wedge: the superior endplate drops most in front.
            top -= loss * h * (0.5 - a / d).clamp(0.0, 1.0) * 1.6;
        }
        if z > top {
            let base = Voxel::new(Material::Annulus, Anatomy::DiscAnnulus);
            return base.with_lesion(Material::Annulus, Lesion::Fracture);
        }
        let radial = (x / (w / 2.0)).powi(2) + (a / (d / 2.0)).powi(2);
        let shell = 1.0 - (1.2 / (d / 2.0)) * 2.0;
        let endplate = z > top - 1.2 || z < -h / 2.0 + 1.2;
        if endplate {
            let v = Voxel::new(Material::Cortical, Anatomy::Endplate);
            if de.is_some_and(|e| e.inflamed) {
                return v.with_lesion(Material::Edema, Lesion::Discitis);
            }
            return v;
        }
        if radial > shell {
            return Voxel::new(Material::Cortical, Anatomy::CorticalBone);
        }
        let marrow = Voxel::new(Material::Marrow, Anatomy::Marrow);
        let near = |c: V3, r: f64| ((x - c[0]).powi(2) + (a - c[1]).powi(2) + (z - c[2]).powi(2)).sqrt() <= r;
        if let Some((c, r)) = ve.tumor
            && near(c, r)
        {
            return marrow.with_lesion(Material::Tumor, Lesion::MarrowLesion);
        }
        if let Some((c, r)) = ve.hemangioma
            && near(c, r)
        {
            return marrow.with_lesion(Material::Hemangioma, Lesion::Hemangioma);
        }
        if let Some((_, acute)) = ve.fracture {
            let band = acute && z > top - 9.0;
            return marrow.with_lesion(if band { Material::Edema } else { Material::Marrow }, Lesion::Fracture);
        }
        if ve.edema {
            return marrow.with_lesion(Material::Edema, Lesion::MarrowEdema);
        }
        // Discitis spreads edema into the marrow next to the inflamed disc.
        let disc_above_inflamed = k > 0 && self.discs[k - 1].inflamed && z > h / 2.0 - 8.0;
        let disc_below_inflamed = k < self.discs.len() && self.discs[k].inflamed && z < -h / 2.0 + 8.0;
        if disc_above_inflamed || disc_below_inflamed {
            return marrow.with_lesion(Material::Edema, Lesion::Discitis);
        }
        marrow
    }

    #[allow(clippy::too_many_arguments)]
    fn posterior(
        &self,
        k: usize,
        x: f64,
        a: f64,
        z: f64,
        canal_a: f64,
        de: Option<&DiscEffects>,
        zd: f64,
        disc_h: f64,
        wdisc: f64,
        ve: &VertebraEffects,
    ) -> Option<Voxel> {
        let l = &self.levels[k];
        let [_, d, h] = l.body;
        let [cw, ca] = l.canal;
        let pw = l.pedicle_width;
        let ax = x.abs();
        let side = if x >= 0.0 { 0 } else { 1 };
        let bone = Voxel::new(Material::Marrow, Anatomy::PosteriorElement);
        let in_body_zone = z.abs() <= h / 2.0;

        // Pars defect: a fluid cleft through both pars interarticulares.
        if ve.pars_defect
            && ax > cw / 2.0
            && ax < cw / 2.0 + pw * 1.3
            && a > canal_a
            && a < canal_a + ca / 2.0 + 7.0
            && (z + h * 0.28).abs() < 1.6
        {
            return Some(
                Voxel::new(Material::JointFluid, Anatomy::PosteriorElement)
                    .with_lesion(Material::JointFluid, Lesion::ParsDefect),
            );
        }
        // Pedicles.
        if in_body_zone
            && ax >= cw / 2.0 - 0.5
            && ax <= cw / 2.0 + pw
            && a >= d / 2.0 - 3.0
            && a <= canal_a + ca * 0.3
            && z.abs() < h * 0.36
        {
            return Some(bone);
        }
        // Laminae and pars, the ring behind the canal.
        let lt = 6.0;
        if in_body_zone
            && ax <= cw / 2.0 + pw
            && a >= canal_a + ca / 2.0 - 0.5
            && a <= canal_a + ca / 2.0 + lt
            && z > -h / 2.0 + 1.0
        {
            return Some(bone);
        }
        // Ligamentum flavum between the laminae.
        if !in_body_zone && ax <= cw / 2.0 && a >= canal_a + ca / 2.0 - 1.0 && a <= canal_a + ca / 2.0 + 4.0 {
            return Some(Voxel::new(Material::Ligament, Anatomy::Ligament));
        }
        // Facet joints at the disc level, with the joint space between.
        let fx = cw / 2.0 + pw * 0.55;
        let fa = canal_a + ca * 0.35;
        let fr = 5.5 + 0.1 * pw;
        let facet_d = ((ax - fx).powi(2) + (a - fa).powi(2) + (zd * 0.8).powi(2)).sqrt();
        if de.is_some() && facet_d <= fr {
            if zd.abs() < 0.8 {
                return Some(Voxel::new(Material::JointFluid, Anatomy::FacetJoint));
            }
            return Some(bone);
        }
        // Spinous process, sloping down behind.
        let sp_start = canal_a + ca / 2.0 + lt - 1.0;
        let sp_len = if k <= 5 {
            22.0
        } else if k <= 17 {
            30.0
        } else {
            28.0
        };
        let slope = if (6..=17).contains(&k) { 0.6 } else { 0.15 };
        if ax <= 3.5 && a >= sp_start && a <= sp_start + sp_len {
            let zc = -(a - sp_start) * slope;
            if (z - zc) > -h * 0.35 && (z - zc) < h * 0.25 {
                return Some(bone);
            }
        }
        // Neural foramen: fat around the exiting root, at the disc level.
        if de.is_some() && ax > cw / 2.0 - 0.5 && ax < cw / 2.0 + pw + 6.0 && (a - canal_a).abs() < ca * 0.5 {
            let frac = de.map(|e| e.foraminal[side]).unwrap_or(0.0);
            let root_z = zd - disc_h * 0.5 - 2.5;
            let root_a = a - (canal_a - 0.1 * ca);
            let root_r = 2.4 * (1.0 - 0.5 * (frac - 0.6).max(0.0) / 0.4);
            let fat_ra = ca * 0.45;
            let fat_rz = disc_h * 0.9 + 4.0;
            let in_fat = (root_a / fat_ra).powi(2) + (root_z / fat_rz).powi(2) <= 1.0;
            if in_fat {
                let root_dist = (root_a.powi(2) + root_z.powi(2)).sqrt();
                if root_dist <= root_r {
                    return Some(Voxel::new(Material::Nerve, Anatomy::NerveRoot));
                }
                let shrunk = 1.0 - frac * wdisc.max(0.6);
                let in_open = (root_a / (fat_ra * shrunk)).powi(2) + (root_z / (fat_rz * shrunk)).powi(2) <= 1.0;
                let fat = Voxel::new(Material::Fat, Anatomy::ForaminalFat);
                // Narrowing: fat replaced from the margins, and in severe
                // cases a compressed (thinner) root.
                if frac > 0.0 && (!in_open || root_dist <= 2.4) {
                    let m = if in_open { Material::Fat } else { Material::Annulus };
                    return Some(fat.with_lesion(m, Lesion::ForaminalStenosis));
                }
                return Some(fat);
            }
        }
        None
    }

    /// Centre of a disc (between vertebra `i` and `i + 1`) and its axis.
    pub fn disc_center(&self, i: usize) -> (V3, V3) {
        let l = &self.levels[i];
        let c = add(l.center, scale(l.axis, -(l.body[2] / 2.0 + l.disc_below / 2.0)));
        let next = &self.levels[i + 1];
        (c, unit(add(l.axis, next.axis)))
    }
}
