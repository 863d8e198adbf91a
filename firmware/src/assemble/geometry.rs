//! Slice geometry: the plane of a series from its direction cosines, and the
//! order of its slices along the slice normal (never by InstanceNumber, which
//! scanners number by acquisition, interleave or reverse).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plane {
    Sagittal,
    Coronal,
    Axial,
    Oblique,
}

impl Plane {
    pub fn as_str(self) -> &'static str {
        match self {
            Plane::Sagittal => "sagittal",
            Plane::Coronal => "coronal",
            Plane::Axial => "axial",
            Plane::Oblique => "oblique",
        }
    }
}

pub fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

pub fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Unit slice normal (row × column) of an ImageOrientationPatient, or None
/// when the cosines are degenerate.
pub fn normal(orientation: &[f64; 6]) -> Option<[f64; 3]> {
    let n = cross(
        [orientation[0], orientation[1], orientation[2]],
        [orientation[3], orientation[4], orientation[5]],
    );
    let len = dot(n, n).sqrt();
    (len > 0.5 && len.is_finite()).then(|| [n[0] / len, n[1] / len, n[2] / len])
}

/// The patient axis the normal is closest to: x (left-right) = sagittal,
/// y (anterior-posterior) = coronal, z (head-foot) = axial; beyond
/// `oblique_threshold_degrees` from all of them, oblique.
pub fn plane_of(normal: [f64; 3], oblique_threshold_degrees: f64) -> Plane {
    let (axis, cos) = normal
        .iter()
        .map(|c| c.abs())
        .enumerate()
        .fold((0, 0.0), |best, (i, c)| if c > best.1 { (i, c) } else { best });
    if cos < oblique_threshold_degrees.to_radians().cos() {
        return Plane::Oblique;
    }
    [Plane::Sagittal, Plane::Coronal, Plane::Axial][axis]
}

/// One slice as assembly knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slice {
    pub sop_instance_uid: String,
    /// File name within the series directory.
    pub file: String,
    /// Frame number (1-based) for multi-frame instances, 1 otherwise.
    pub frame: u32,
    pub instance_number: Option<i32>,
    pub position: [f64; 3],
    /// Signed distance along the stack normal, in mm.
    pub distance_mm: f64,
}

/// Slices sharing one orientation, ordered along their normal. Spine axial
/// series often hold several stacks, one angled through each disc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stack {
    pub orientation: [f64; 6],
    pub normal: [f64; 3],
    pub plane: Plane,
    pub slices: Vec<Slice>,
}

/// What ordering needs of each slice before it is placed.
#[derive(Debug, Clone)]
pub struct Placed {
    pub sop_instance_uid: String,
    pub file: String,
    pub frame: u32,
    pub instance_number: Option<i32>,
    pub orientation: [f64; 6],
    pub position: [f64; 3],
}

/// Two normals within about half a degree belong to the same stack.
const SAME_STACK_COS: f64 = 0.99996;

/// Groups slices into stacks by orientation and orders each along its normal
/// (ties, e.g. multi-echo, by InstanceNumber then frame). Stacks are ordered
/// by the mean position along the first stack's normal, so a multi-block
/// axial series reads head to foot or foot to head consistently.
pub fn build_stacks(slices: Vec<Placed>, oblique_threshold_degrees: f64) -> Vec<Stack> {
    let mut stacks: Vec<Stack> = Vec::new();
    for s in slices {
        let Some(n) = normal(&s.orientation) else {
            continue;
        };
        let slice = Slice {
            distance_mm: dot(s.position, n),
            sop_instance_uid: s.sop_instance_uid,
            file: s.file,
            frame: s.frame,
            instance_number: s.instance_number,
            position: s.position,
        };
        match stacks.iter_mut().find(|st| dot(st.normal, n) > SAME_STACK_COS) {
            Some(stack) => stack.slices.push(slice),
            None => stacks.push(Stack {
                orientation: s.orientation,
                normal: n,
                plane: plane_of(n, oblique_threshold_degrees),
                slices: vec![slice],
            }),
        }
    }
    for stack in &mut stacks {
        stack.slices.sort_by(|a, b| {
            a.distance_mm
                .total_cmp(&b.distance_mm)
                .then(a.instance_number.cmp(&b.instance_number))
                .then(a.frame.cmp(&b.frame))
        });
    }
    if let Some(reference) = stacks.first().map(|s| s.normal) {
        let centre = |st: &Stack| {
            st.slices.iter().map(|s| dot(s.position, reference)).sum::<f64>() / st.slices.len().max(1) as f64
        };
        stacks.sort_by(|a, b| centre(a).total_cmp(&centre(b)));
    }
    stacks
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAG: [f64; 6] = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0];
    const AX: [f64; 6] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
    const COR: [f64; 6] = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0];

    fn placed(uid: &str, orientation: [f64; 6], position: [f64; 3], instance: i32) -> Placed {
        Placed {
            sop_instance_uid: uid.into(),
            file: format!("{uid}.dcm"),
            frame: 1,
            instance_number: Some(instance),
            orientation,
            position,
        }
    }

    #[test]
    fn planes_from_cosines() {
        assert_eq!(plane_of(normal(&SAG).unwrap(), 35.0), Plane::Sagittal);
        assert_eq!(plane_of(normal(&AX).unwrap(), 35.0), Plane::Axial);
        assert_eq!(plane_of(normal(&COR).unwrap(), 35.0), Plane::Coronal);
        // An axial tilted 25 degrees along a lumbar disc is still axial ...
        let t = 25f64.to_radians();
        let tilted = [1.0, 0.0, 0.0, 0.0, t.cos(), t.sin()];
        assert_eq!(plane_of(normal(&tilted).unwrap(), 35.0), Plane::Axial);
        // ... but at 45 degrees it is oblique.
        let t = 45f64.to_radians();
        let oblique = [1.0, 0.0, 0.0, 0.0, t.cos(), t.sin()];
        assert_eq!(plane_of(normal(&oblique).unwrap(), 35.0), Plane::Oblique);
        assert!(normal(&[0.0; 6]).is_none());
    }

    #[test]
    fn orders_by_position_not_instance_number() {
        // Interleaved acquisition: instance numbers do not follow position.
        let slices = vec![
            placed("a", SAG, [10.0, 0.0, 0.0], 1),
            placed("b", SAG, [-10.0, 0.0, 0.0], 2),
            placed("c", SAG, [0.0, 0.0, 0.0], 3),
        ];
        let stacks = build_stacks(slices, 35.0);
        assert_eq!(stacks.len(), 1);
        let order: Vec<_> = stacks[0].slices.iter().map(|s| s.sop_instance_uid.as_str()).collect();
        // normal of SAG is row x col = (0,1,0) x (0,0,-1) = (-1,0,0)
        assert_eq!(order, ["a", "c", "b"]);
        assert_eq!(stacks[0].plane, Plane::Sagittal);
    }

    #[test]
    fn splits_multi_block_axials_into_stacks() {
        let t = 15f64.to_radians();
        let tilted = [1.0, 0.0, 0.0, 0.0, t.cos(), t.sin()];
        let slices = vec![
            placed("l45a", tilted, [0.0, 0.0, -100.0], 1),
            placed("l34a", AX, [0.0, 0.0, -60.0], 4),
            placed("l45b", tilted, [0.0, 0.0, -96.0], 2),
            placed("l34b", AX, [0.0, 0.0, -64.0], 3),
        ];
        let stacks = build_stacks(slices, 35.0);
        assert_eq!(stacks.len(), 2);
        assert!(stacks.iter().all(|s| s.plane == Plane::Axial && s.slices.len() == 2));
        // ordered by position along the first stack's normal: lower block first
        assert!(stacks[0].slices[0].sop_instance_uid.starts_with("l45"));
    }
}
