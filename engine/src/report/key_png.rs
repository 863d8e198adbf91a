//! Key-image PNGs for people without a DICOM viewer (`analyze --out`): the
//! finding's slice, windowed on its own histogram, with a ring drawn where
//! the finding is. Colour says urgency: red critical, orange urgent,
//! yellow routine.

use crate::decode::DecodedSlice;

/// Ring colour by triage category (1 critical .. 3 routine).
pub fn category_colour(category: u8) -> [u8; 3] {
    match category {
        1 => [230, 30, 30],
        2 => [255, 140, 0],
        _ => [255, 230, 0],
    }
}

/// Display window: the 1st to 99.5th percentile of the slice's values, so
/// one bright vessel or fat pad does not leave the spine black.
fn window(values: &[i32]) -> (f32, f32) {
    if values.is_empty() {
        return (0.0, 1.0);
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let at = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f32;
    let (lo, hi) = (at(0.01), at(0.995));
    if hi > lo { (lo, hi) } else { (lo, lo + 1.0) }
}

/// RGB pixels of the slice with a ring of radius `radius` pixels around
/// `point` (column, row).
pub fn draw(slice: &DecodedSlice, point: (f32, f32), radius: f32, colour: [u8; 3]) -> Vec<u8> {
    let (lo, hi) = window(&slice.values);
    let mut rgb = Vec::with_capacity(slice.values.len() * 3);
    for &v in &slice.values {
        let mut g = ((v as f32 - lo) / (hi - lo)).clamp(0.0, 1.0);
        if slice.invert {
            g = 1.0 - g;
        }
        let g = (g * 255.0).round() as u8;
        rgb.extend_from_slice(&[g, g, g]);
    }
    // A ring two pixels thick: visible on any matrix size, and it leaves the
    // finding itself unobscured.
    let (cx, cy) = point;
    let r0 = (radius - 1.0).max(1.0);
    let r1 = radius + 1.0;
    let rows = slice.rows as i64;
    let cols = slice.cols as i64;
    for y in ((cy - r1).floor() as i64).max(0)..=((cy + r1).ceil() as i64).min(rows - 1) {
        for x in ((cx - r1).floor() as i64).max(0)..=((cx + r1).ceil() as i64).min(cols - 1) {
            let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
            if d >= r0 && d <= r1 {
                let i = ((y * cols + x) * 3) as usize;
                rgb[i..i + 3].copy_from_slice(&colour);
            }
        }
    }
    rgb
}

/// Encodes RGB pixels as a PNG.
pub fn encode_png(rgb: &[u8], rows: usize, cols: usize) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, cols as u32, rows as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header()?;
        w.write_image_data(rgb)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_drawn_around_the_point_and_the_png_decodes() {
        let slice = DecodedSlice {
            rows: 32,
            cols: 48,
            values: (0..32 * 48).map(|i| (i % 48) as i32 * 10).collect(),
            invert: false,
        };
        let rgb = draw(&slice, (20.0, 10.0), 5.0, [255, 0, 0]);
        let px = |x: usize, y: usize| &rgb[(y * 48 + x) * 3..(y * 48 + x) * 3 + 3];
        assert_eq!(px(25, 10), &[255, 0, 0]); // on the ring
        assert_ne!(px(20, 10), &[255, 0, 0]); // the centre stays visible
        assert_eq!(px(0, 0), &[0, 0, 0]); // windowed grey
        assert_eq!(px(47, 31), &[255, 255, 255]);
        let bytes = encode_png(&rgb, 32, 48).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (48, 32));
    }

    #[test]
    fn rings_near_the_edge_are_clipped() {
        let slice = DecodedSlice {
            rows: 8,
            cols: 8,
            values: vec![5; 64],
            invert: true,
        };
        let rgb = draw(&slice, (0.0, 7.0), 4.0, [1, 2, 3]);
        assert_eq!(rgb.len(), 8 * 8 * 3);
    }
}
