//! A structural pre-check of a received data set before the full parser
//! sees it: every element's declared length must fit inside its container,
//! sequences and items must be properly delimited, nesting is bounded.
//! Tag order is not checked: real scanner files break it and DCMTK copes.
//!
//! Why: a declared length of 0xFEFEFEFE in 300 bytes of garbage kept the
//! full parser busy for ten seconds (measured on dicom-object 0.10.1), and
//! a peer must not be able to stall or balloon the receiver with a few
//! bytes. This walk is linear in the input and allocates nothing.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_END: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_END: Tag = Tag(0xFFFE, 0xE0DD);
const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);
const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    ImplicitLittle,
    ExplicitLittle,
    ExplicitBig,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed data set at byte {offset}: {problem}")]
pub struct StructureError {
    pub offset: usize,
    pub problem: &'static str,
}

/// What the walk saw of the top-level Pixel Data element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelData {
    /// Native: the value length in bytes.
    Native { bytes: u64 },
    /// Encapsulated: the number of fragments (after the offset table item).
    Encapsulated { fragments: usize },
}

/// The result of a successful walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walked {
    /// Where the elements end (before any trailing zero padding).
    pub end: usize,
    pub pixel_data: Option<PixelData>,
}

struct Walker<'a> {
    bytes: &'a [u8],
    encoding: Encoding,
    /// Items seen inside encapsulated pixel data.
    fragment_items: std::cell::Cell<usize>,
    pixel_data: std::cell::Cell<Option<PixelData>>,
}

fn err<T>(offset: usize, problem: &'static str) -> Result<T, StructureError> {
    Err(StructureError { offset, problem })
}

impl Walker<'_> {
    fn u16_at(&self, pos: usize) -> Option<u16> {
        let b = self.bytes.get(pos..pos + 2)?;
        Some(match self.encoding {
            Encoding::ExplicitBig => u16::from_be_bytes([b[0], b[1]]),
            _ => u16::from_le_bytes([b[0], b[1]]),
        })
    }

    fn u32_at(&self, pos: usize) -> Option<u32> {
        let b = self.bytes.get(pos..pos + 4)?;
        Some(match self.encoding {
            Encoding::ExplicitBig => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            _ => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        })
    }

    fn tag_at(&self, pos: usize) -> Result<Tag, StructureError> {
        match (self.u16_at(pos), self.u16_at(pos + 2)) {
            (Some(g), Some(e)) => Ok(Tag(g, e)),
            _ => err(pos, "truncated element header"),
        }
    }

    /// Walks elements in `[pos, end)`; with `until_item_end`, stops after an
    /// item delimitation (undefined-length item). Returns the end position.
    fn data_set(
        &self,
        mut pos: usize,
        end: usize,
        depth: usize,
        until_item_end: bool,
    ) -> Result<usize, StructureError> {
        if depth > MAX_DEPTH {
            return err(pos, "sequences nested too deeply");
        }
        while pos < end {
            let tag = self.tag_at(pos)?;
            // Some writers pad files with zero bytes after the last element;
            // DCMTK and dicom-object tolerate it, so do we (top level only).
            if depth == 0 && tag == Tag(0, 0) && self.bytes[pos..end].iter().all(|b| *b == 0) {
                return Ok(pos);
            }
            if tag == ITEM_END {
                if !until_item_end {
                    return err(pos, "item delimiter outside an item");
                }
                return Ok(pos + 8);
            }
            if tag.group() == 0xFFFE {
                return err(pos, "item or sequence delimiter where an element belongs");
            }
            let (vr, header, len) = self.element_header(pos, tag)?;
            let value_start = pos + header;
            if depth == 0 && tag == PIXEL_DATA {
                self.fragment_items.set(0);
            }
            if len == UNDEFINED {
                match vr {
                    Some(VR::SQ) | None => pos = self.sequence_items(value_start, end, depth + 1, tag == PIXEL_DATA)?,
                    Some(VR::OB | VR::UN | VR::OW) if tag == PIXEL_DATA || vr == Some(VR::UN) => {
                        pos = self.sequence_items(value_start, end, depth + 1, tag == PIXEL_DATA)?
                    }
                    _ => return err(pos, "undefined length on a VR that cannot have one"),
                }
                if depth == 0 && tag == PIXEL_DATA {
                    let fragments = self.fragment_items.get().saturating_sub(1);
                    self.pixel_data.set(Some(PixelData::Encapsulated { fragments }));
                }
                continue;
            }
            let value_end = match value_start.checked_add(len as usize) {
                Some(v) if v <= end => v,
                _ => return err(pos, "element length exceeds the data set"),
            };
            if vr == Some(VR::SQ) {
                self.defined_sequence(value_start, value_end, depth + 1)?;
            }
            if depth == 0 && tag == PIXEL_DATA {
                self.pixel_data.set(Some(PixelData::Native { bytes: len as u64 }));
            }
            pos = value_end;
        }
        if until_item_end {
            return err(pos, "item without its delimiter");
        }
        Ok(pos)
    }

    /// (VR if known, header length, value length).
    fn element_header(&self, pos: usize, tag: Tag) -> Result<(Option<VR>, usize, u32), StructureError> {
        match self.encoding {
            Encoding::ImplicitLittle => {
                let len = self.u32_at(pos + 4).ok_or(StructureError {
                    offset: pos,
                    problem: "truncated element header",
                })?;
                let vr = StandardDataDictionary.by_tag(tag).and_then(|e| match e.vr() {
                    VirtualVr::Exact(vr) => Some(vr),
                    _ => None,
                });
                let vr = if len == UNDEFINED && vr != Some(VR::SQ) && tag != PIXEL_DATA {
                    None
                } else {
                    vr
                };
                Ok((vr, 8, len))
            }
            Encoding::ExplicitLittle | Encoding::ExplicitBig => {
                let code = self.bytes.get(pos + 4..pos + 6).ok_or(StructureError {
                    offset: pos,
                    problem: "truncated element header",
                })?;
                let vr = VR::from_binary([code[0], code[1]]).ok_or(StructureError {
                    offset: pos,
                    problem: "unknown VR",
                })?;
                let long = matches!(
                    vr,
                    VR::OB
                        | VR::OD
                        | VR::OF
                        | VR::OL
                        | VR::OV
                        | VR::OW
                        | VR::SQ
                        | VR::SV
                        | VR::UC
                        | VR::UN
                        | VR::UR
                        | VR::UT
                        | VR::UV
                );
                if long {
                    let len = self.u32_at(pos + 8).ok_or(StructureError {
                        offset: pos,
                        problem: "truncated element header",
                    })?;
                    Ok((Some(vr), 12, len))
                } else {
                    let len = self.u16_at(pos + 6).ok_or(StructureError {
                        offset: pos,
                        problem: "truncated element header",
                    })?;
                    Ok((Some(vr), 8, len as u32))
                }
            }
        }
    }

    /// Items of an undefined-length sequence (or pixel fragments) up to the
    /// sequence delimiter.
    fn sequence_items(
        &self,
        mut pos: usize,
        end: usize,
        depth: usize,
        fragments: bool,
    ) -> Result<usize, StructureError> {
        loop {
            let tag = self.tag_at(pos)?;
            let len = self.u32_at(pos + 4).ok_or(StructureError {
                offset: pos,
                problem: "truncated item header",
            })?;
            if tag == SEQUENCE_END {
                return Ok(pos + 8);
            }
            if tag != ITEM {
                return err(pos, "expected an item in a sequence");
            }
            pos = self.item(pos + 8, len, end, depth, fragments)?;
        }
    }

    fn defined_sequence(&self, mut pos: usize, end: usize, depth: usize) -> Result<(), StructureError> {
        while pos < end {
            let tag = self.tag_at(pos)?;
            if tag != ITEM {
                return err(pos, "expected an item in a sequence");
            }
            let len = self.u32_at(pos + 4).ok_or(StructureError {
                offset: pos,
                problem: "truncated item header",
            })?;
            pos = self.item(pos + 8, len, end, depth, false)?;
        }
        if pos != end {
            return err(pos, "sequence items overrun the sequence length");
        }
        Ok(())
    }

    fn item(&self, start: usize, len: u32, end: usize, depth: usize, fragment: bool) -> Result<usize, StructureError> {
        if len == UNDEFINED {
            if fragment {
                return err(start, "pixel data fragment of undefined length");
            }
            return self.data_set(start, end, depth, true);
        }
        let item_end = match start.checked_add(len as usize) {
            Some(v) if v <= end => v,
            _ => return err(start, "item length exceeds its container"),
        };
        if fragment {
            self.fragment_items.set(self.fragment_items.get() + 1);
        } else {
            self.data_set(start, item_end, depth, false)?;
        }
        Ok(item_end)
    }
}

/// Where the data set starts in a Part 10 file: after the preamble, the
/// magic and every (0002,xxxx) element. Walks the elements rather than
/// trusting FileMetaInformationGroupLength, which some writers get wrong.
pub fn data_set_offset(bytes: &[u8]) -> Option<usize> {
    if bytes.get(128..132)? != b"DICM" {
        return None;
    }
    let mut pos = 132;
    while let Some(header) = bytes.get(pos..pos + 8) {
        let group = u16::from_le_bytes([header[0], header[1]]);
        if group != 0x0002 {
            break;
        }
        let vr = &header[4..6];
        // Explicit VR little endian: these VRs have a 4-byte length after 2 reserved bytes.
        let long = matches!(
            vr,
            b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"SQ" | b"SV" | b"UC" | b"UN" | b"UR" | b"UT" | b"UV"
        );
        let (header_len, value_len) = if long {
            let l = bytes.get(pos + 8..pos + 12)?;
            (12, u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize)
        } else {
            (8, u16::from_le_bytes([header[6], header[7]]) as usize)
        };
        pos = pos.checked_add(header_len)?.checked_add(value_len)?;
    }
    (pos <= bytes.len()).then_some(pos)
}

/// Checks a whole data set (the bytes after the file meta): where its
/// elements end (before any trailing zero padding) and what its pixel data is.
pub fn check(bytes: &[u8], encoding: Encoding) -> Result<Walked, StructureError> {
    let walker = Walker {
        bytes,
        encoding,
        fragment_items: std::cell::Cell::new(0),
        pixel_data: std::cell::Cell::new(None),
    };
    let end = walker.data_set(0, bytes.len(), 0, false)?;
    Ok(Walked {
        end,
        pixel_data: walker.pixel_data.get(),
    })
}

/// The transfer syntax UID in a file meta group we wrote.
fn transfer_syntax_in_meta(meta: &[u8]) -> String {
    let Some(i) = meta.windows(4).position(|w| w == [0x02, 0x00, 0x10, 0x00]) else {
        return String::new();
    };
    let Some(len) = meta
        .get(i + 6..i + 8)
        .map(|l| u16::from_le_bytes([l[0], l[1]]) as usize)
    else {
        return String::new();
    };
    meta.get(i + 8..i + 8 + len)
        .map(|v| String::from_utf8_lossy(v).trim_end_matches(['\0', ' ']).to_string())
        .unwrap_or_default()
}

/// Parses a Part 10 file held in memory: the structural walk first, then
/// the full parser on the data set without any trailing zero padding.
pub fn parse_instance(bytes: &[u8], max_bytes: u64) -> Result<dicom_object::DefaultDicomObject, String> {
    let start = data_set_offset(bytes).ok_or("file meta unreadable")?;
    let ts_uid = transfer_syntax_in_meta(&bytes[..start]);
    let walked = check_structure(&bytes[start..], &ts_uid, max_bytes)?;
    dicom_object::OpenFileOptions::new()
        .from_reader(&bytes[128..start + walked.end])
        .map_err(|e| e.to_string())
}

/// Opens a spooled instance with everything (pixel data included).
pub fn open_instance(path: &std::path::Path) -> Result<dicom_object::DefaultDicomObject, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_instance(&bytes, u64::MAX).map_err(|e| format!("{}: {e}", path.display()))
}

const DEFLATED: &str = "1.2.840.10008.1.2.1.99";

pub fn check_structure(data_set: &[u8], ts_uid: &str, limit: u64) -> Result<Walked, String> {
    match ts_uid {
        "1.2.840.10008.1.2" => check(data_set, Encoding::ImplicitLittle).map_err(|e| e.to_string()),
        "1.2.840.10008.1.2.2" => check(data_set, Encoding::ExplicitBig).map_err(|e| e.to_string()),
        DEFLATED => {
            // Inflate with a cap, so a deflate bomb cannot balloon memory.
            use std::io::Read;
            let mut inflated = Vec::new();
            flate2::read::DeflateDecoder::new(data_set)
                .take(limit + 1)
                .read_to_end(&mut inflated)
                .map_err(|e| format!("deflate: {e}"))?;
            if inflated.len() as u64 > limit {
                return Err("inflated data set larger than the instance limit".into());
            }
            let walked = check(&inflated, Encoding::ExplicitLittle).map_err(|e| e.to_string())?;
            // The parser reads the deflated bytes: all of them.
            Ok(Walked {
                end: data_set.len(),
                ..walked
            })
        }
        _ => check(data_set, Encoding::ExplicitLittle).map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explicit(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&tag.0.to_le_bytes());
        v.extend_from_slice(&tag.1.to_le_bytes());
        v.extend_from_slice(vr);
        v.extend_from_slice(&(value.len() as u16).to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    #[test]
    fn data_set_offset_ignores_a_wrong_group_length() {
        let meta = FileMetaTableBuilderForTest::bytes("1.2.3");
        let mut file = meta.clone();
        file.extend_from_slice(&[0x08, 0x00, 0x16, 0x00]);
        let start = data_set_offset(&file).unwrap();
        assert_eq!(start, meta.len());
        // Corrupt the group length: the walk does not care.
        file[140] = file[140].wrapping_add(20);
        assert_eq!(data_set_offset(&file), Some(meta.len()));
        assert_eq!(data_set_offset(&file[..100]), None);
    }

    struct FileMetaTableBuilderForTest;
    impl FileMetaTableBuilderForTest {
        fn bytes(sop: &str) -> Vec<u8> {
            let meta = dicom_object::meta::FileMetaTableBuilder::new()
                .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.4")
                .media_storage_sop_instance_uid(sop)
                .transfer_syntax("1.2.840.10008.1.2.1")
                .implementation_class_uid("2.25.1")
                .build()
                .unwrap();
            let mut out = vec![0u8; 128];
            out.extend_from_slice(b"DICM");
            meta.write(&mut out).unwrap();
            out
        }
    }

    #[test]
    fn accepts_a_simple_data_set() {
        let mut ds = explicit((0x0008, 0x0060), b"CS", b"MR");
        ds.extend(explicit((0x0028, 0x0010), b"US", &[0, 1]));
        let mut pixels = vec![0xe0, 0x7f, 0x10, 0x00, b'O', b'W', 0, 0, 8, 0, 0, 0];
        pixels.extend_from_slice(&[0; 8]);
        ds.extend(pixels);
        assert_eq!(
            check(&ds, Encoding::ExplicitLittle),
            Ok(Walked {
                end: ds.len(),
                pixel_data: Some(PixelData::Native { bytes: 8 })
            })
        );
    }

    #[test]
    fn rejects_garbage_fast() {
        let started = std::time::Instant::now();
        assert!(check(&[0xfe; 300], Encoding::ExplicitLittle).is_err());
        assert!(check(&[0xfe; 300], Encoding::ImplicitLittle).is_err());
        assert!(started.elapsed().as_millis() < 50);
    }

    #[test]
    fn rejects_lengths_beyond_the_end() {
        let mut ds = explicit((0x0008, 0x0060), b"CS", b"MR");
        ds.truncate(ds.len() - 1);
        assert_eq!(
            check(&ds, Encoding::ExplicitLittle).unwrap_err().problem,
            "element length exceeds the data set"
        );
    }

    #[test]
    fn walks_undefined_length_sequences_and_fragments() {
        let mut ds = Vec::new();
        // (0008,1140) SQ undefined, one undefined item holding one element.
        ds.extend_from_slice(&[0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0, 0xff, 0xff, 0xff, 0xff]);
        ds.extend_from_slice(&[0xfe, 0xff, 0x00, 0xe0, 0xff, 0xff, 0xff, 0xff]);
        ds.extend(explicit((0x0008, 0x1150), b"UI", b"1.2"));
        ds.extend_from_slice(&[0xfe, 0xff, 0x0d, 0xe0, 0, 0, 0, 0]);
        ds.extend_from_slice(&[0xfe, 0xff, 0xdd, 0xe0, 0, 0, 0, 0]);
        // Encapsulated pixel data: empty offset table, one 4-byte fragment.
        ds.extend_from_slice(&[0xe0, 0x7f, 0x10, 0x00, b'O', b'B', 0, 0, 0xff, 0xff, 0xff, 0xff]);
        ds.extend_from_slice(&[0xfe, 0xff, 0x00, 0xe0, 0, 0, 0, 0]);
        ds.extend_from_slice(&[0xfe, 0xff, 0x00, 0xe0, 4, 0, 0, 0, 1, 2, 3, 4]);
        ds.extend_from_slice(&[0xfe, 0xff, 0xdd, 0xe0, 0, 0, 0, 0]);
        assert_eq!(
            check(&ds, Encoding::ExplicitLittle).unwrap().pixel_data,
            Some(PixelData::Encapsulated { fragments: 1 })
        );
        // Drop the sequence delimiter: an error, not a hang.
        ds.truncate(ds.len() - 8);
        assert!(check(&ds, Encoding::ExplicitLittle).is_err());
    }

    #[test]
    fn tolerates_trailing_zero_padding() {
        let mut ds = explicit((0x0008, 0x0060), b"CS", b"MR");
        ds.extend_from_slice(&[0; 37]);
        assert_eq!(
            check(&ds, Encoding::ExplicitLittle),
            Ok(Walked {
                end: ds.len() - 37,
                pixel_data: None
            })
        );
        ds.push(1);
        assert!(check(&ds, Encoding::ExplicitLittle).is_err());
    }

    #[test]
    fn rejects_deep_nesting() {
        let mut deep = Vec::new();
        for _ in 0..40 {
            deep.extend_from_slice(&[0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0, 0xff, 0xff, 0xff, 0xff]);
            deep.extend_from_slice(&[0xfe, 0xff, 0x00, 0xe0, 0xff, 0xff, 0xff, 0xff]);
        }
        assert_eq!(
            check(&deep, Encoding::ExplicitLittle).unwrap_err().problem,
            "sequences nested too deeply"
        );
    }
}
