//! Minimal NumPy `.npy` reading and writing for float32 arrays (golden
//! inputs and outputs of bundles). Version 1.0 headers, little endian, C order.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NpyError {
    #[error("cannot read {path}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Format { path: std::path::PathBuf, problem: String },
}

/// A float32 array: shape and values.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrayF32 {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

pub fn read_f32(path: &Path) -> Result<ArrayF32, NpyError> {
    let bad = |problem: &str| NpyError::Format {
        path: path.to_owned(),
        problem: problem.to_string(),
    };
    let bytes = std::fs::read(path).map_err(|source| NpyError::Read {
        path: path.to_owned(),
        source,
    })?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file"));
    }
    let (header_len, header_start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad("unsupported .npy version")),
    };
    let header = std::str::from_utf8(
        bytes
            .get(header_start..header_start + header_len)
            .ok_or_else(|| bad("truncated header"))?,
    )
    .map_err(|_| bad("header is not text"))?;
    if !header.contains("'descr': '<f4'") {
        return Err(bad("expected little-endian float32 ('<f4')"));
    }
    if header.contains("'fortran_order': True") {
        return Err(bad("Fortran order not supported"));
    }
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad("bad shape")))
        .collect::<Result<_, _>>()?;
    let body = &bytes[header_start + header_len..];
    let count: usize = shape.iter().product();
    if body.len() != count * 4 {
        return Err(bad(&format!("{} data bytes for shape {shape:?}", body.len())));
    }
    let data = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(ArrayF32 { shape, data })
}

pub fn write_f32(path: &Path, a: &ArrayF32) -> std::io::Result<()> {
    let dims: Vec<String> = a.shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}").into_bytes();
    let total = (10 + header.len() + 1).div_ceil(64) * 64;
    header.resize(total - 11, b' ');
    header.push(b'\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(&header);
    for v in &a.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let a = ArrayF32 {
            shape: vec![2, 3],
            data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5],
        };
        write_f32(&p, &a).unwrap();
        assert_eq!(read_f32(&p).unwrap(), a);
        std::fs::write(&p, b"nope").unwrap();
        assert!(read_f32(&p).unwrap_err().to_string().contains("not a .npy"));
    }
}
