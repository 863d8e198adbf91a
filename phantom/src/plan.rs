//! Acquisition planning as a technologist does it: a sagittal stack over
//! the region (slightly oblique, per subject), axial stacks angled through
//! each disc, a three-plane localizer. Pure geometry: each stack lists its
//! slice positions and direction cosines in patient coordinates.

use serde::Serialize;

use crate::anatomy::{Subject, V3, add, cross, dot, scale, sub, unit};
use crate::levels::{DISCS, Region, disc_index};
use crate::rng::Rng;
use crate::vendor::Vendor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlaneKind {
    Sagittal,
    Axial,
    Localizer,
}

/// A stack of parallel slices.
#[derive(Debug, Clone, Serialize)]
pub struct Stack {
    /// Direction of increasing column index (DICOM "row direction").
    pub row_dir: V3,
    /// Direction of increasing row index.
    pub col_dir: V3,
    /// Centre of each slice.
    pub centers: Vec<V3>,
    /// The disc the stack is angled through (axial stacks).
    pub disc: Option<String>,
}

impl Stack {
    pub fn normal(&self) -> V3 {
        unit(cross(self.row_dir, self.col_dir))
    }
}

/// Slices with a shared matrix, spacing and thickness.
#[derive(Debug, Clone, Serialize)]
pub struct Geometry {
    pub kind: PlaneKind,
    pub rows: usize,
    pub cols: usize,
    /// Pixel spacing (row spacing = column spacing), mm.
    pub pixel_mm: f64,
    pub thickness_mm: f64,
    pub spacing_mm: f64,
    pub stacks: Vec<Stack>,
}

impl Geometry {
    pub fn slice_count(&self) -> usize {
        self.stacks.iter().map(|s| s.centers.len()).sum()
    }

    /// Position of pixel (r, c) of a slice centred at `center`.
    pub fn pixel(&self, stack: &Stack, center: V3, r: f64, c: f64) -> V3 {
        let dc = (c - (self.cols as f64 - 1.0) / 2.0) * self.pixel_mm;
        let dr = (r - (self.rows as f64 - 1.0) / 2.0) * self.pixel_mm;
        add(center, add(scale(stack.row_dir, dc), scale(stack.col_dir, dr)))
    }

    /// ImagePositionPatient: the centre of the first transmitted pixel.
    pub fn image_position(&self, stack: &Stack, center: V3) -> V3 {
        self.pixel(stack, center, 0.0, 0.0)
    }
}

/// Centre of the spinal canal of a level (a good centre for a field of view).
fn canal_center(subject: &Subject, k: usize) -> V3 {
    let l = &subject.levels[k];
    add(l.center, scale(l.posterior, l.body[1] / 2.0 + l.canal[1] / 2.0))
}

pub fn sagittal(subject: &Subject, region: Region, vendor: Vendor, rng: &mut Rng) -> Geometry {
    let (first, last) = region.coverage();
    let top = canal_center(subject, first);
    let bottom = canal_center(subject, last);
    let mut center = scale(add(top, bottom), 0.5);
    center[1] -= 10.0; // include the vertebral bodies
    let extent = (top[2] - bottom[2]).abs() + 50.0;
    let fov = match region {
        Region::Cervical => extent.max(220.0),
        Region::Thoracic => extent.max(340.0),
        Region::Lumbar => extent.max(280.0),
        Region::WholeSpine => extent.max(400.0),
    };
    let (n, thickness) = match region {
        Region::Cervical => (13, 3.0),
        Region::Thoracic => (15, 3.5),
        Region::Lumbar => (15, 4.0),
        Region::WholeSpine => (13, 4.0),
    };
    let spacing = thickness * 1.1;
    // A slightly oblique sagittal, as planned on a real patient.
    let yaw = rng.range(-3.0, 3.0).to_radians();
    let row_dir = unit([yaw.sin(), yaw.cos(), 0.0]);
    let col_dir = [0.0, 0.0, -1.0];
    let normal = unit(cross(row_dir, col_dir));
    let centers = (0..n)
        .map(|i| add(center, scale(normal, (i as f64 - (n as f64 - 1.0) / 2.0) * spacing)))
        .collect();
    let matrix = vendor.matrix(false);
    Geometry {
        kind: PlaneKind::Sagittal,
        rows: matrix,
        cols: matrix,
        pixel_mm: fov / matrix as f64,
        thickness_mm: thickness,
        spacing_mm: spacing,
        stacks: vec![Stack {
            row_dir,
            col_dir,
            centers,
            disc: None,
        }],
    }
}

/// The discs a region's axial series covers (findings' discs always included).
pub fn axial_discs(region: Region, finding_discs: &[String]) -> Vec<String> {
    let mut discs: Vec<String> = match region {
        Region::Cervical => region.disc_levels().iter().map(|s| s.to_string()).collect(),
        Region::Lumbar | Region::WholeSpine => Region::Lumbar.disc_levels().iter().map(|s| s.to_string()).collect(),
        Region::Thoracic => ["T3-T4", "T6-T7", "T9-T10", "T11-T12"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    for d in finding_discs {
        if !discs.contains(d) && region.disc_levels().contains(&d.as_str()) {
            discs.push(d.clone());
        }
    }
    discs.sort_by_key(|d| disc_index(d));
    discs
}

pub fn axial(subject: &Subject, region: Region, vendor: Vendor, discs: &[String]) -> Geometry {
    let (n, thickness, fov) = match region {
        Region::Cervical => (3, 3.0, 160.0),
        _ => (4, 4.0, 190.0),
    };
    let spacing = thickness + 0.4;
    let stacks = discs
        .iter()
        .filter_map(|d| disc_index(d).map(|i| (d, i)))
        .map(|(name, i)| {
            let (c, axis) = subject.disc_center(i);
            let row_dir = unit(sub([1.0, 0.0, 0.0], scale(axis, axis[0])));
            let col_dir = unit(cross(axis, row_dir));
            let post = subject.levels[i].posterior;
            // Centre the field on the canal, which sits behind the disc.
            let center = add(c, scale(post, 25.0));
            let centers = (0..n)
                .map(|s| add(center, scale(axis, (s as f64 - (n as f64 - 1.0) / 2.0) * spacing)))
                .collect();
            Stack {
                row_dir,
                col_dir,
                centers,
                disc: Some(name.clone()),
            }
        })
        .collect();
    let matrix = vendor.matrix(true);
    Geometry {
        kind: PlaneKind::Axial,
        rows: matrix,
        cols: matrix,
        pixel_mm: fov / matrix as f64,
        thickness_mm: thickness,
        spacing_mm: spacing,
        stacks,
    }
}

/// One sagittal, one coronal, one axial slice through the region's middle.
pub fn localizer(subject: &Subject, region: Region) -> Geometry {
    let (first, last) = region.coverage();
    let c = scale(add(canal_center(subject, first), canal_center(subject, last)), 0.5);
    let stacks = vec![
        Stack {
            row_dir: [0.0, 1.0, 0.0],
            col_dir: [0.0, 0.0, -1.0],
            centers: vec![c],
            disc: None,
        },
        Stack {
            row_dir: [1.0, 0.0, 0.0],
            col_dir: [0.0, 0.0, -1.0],
            centers: vec![c],
            disc: None,
        },
        Stack {
            row_dir: [1.0, 0.0, 0.0],
            col_dir: [0.0, 1.0, 0.0],
            centers: vec![c],
            disc: None,
        },
    ];
    let fov = 400.0;
    Geometry {
        kind: PlaneKind::Localizer,
        rows: 256,
        cols: 256,
        pixel_mm: fov / 256.0,
        thickness_mm: 10.0,
        spacing_mm: 10.0,
        stacks,
    }
}

/// Distance from a point to a disc's mid-plane, and whether the point is
/// within the disc's footprint (used by the geometry tests).
pub fn distance_to_disc(subject: &Subject, disc: &str, p: V3) -> f64 {
    let i = DISCS.iter().position(|d| *d == disc).expect("known disc");
    let (c, axis) = subject.disc_center(i);
    dot(sub(p, c), axis)
}
