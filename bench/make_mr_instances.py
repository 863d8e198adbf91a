#!/usr/bin/env python3
"""Writes N MR Image Storage instances (512x512, 16-bit, explicit VR little
endian, ~512 KB each) for the receive benchmark. Standard library only; the
pixel data is a deterministic pattern, the geometry a sagittal stack."""
import os
import struct
import sys


def element(group, elem, vr, value):
    if isinstance(value, str):
        value = value.encode("ascii")
        if len(value) % 2:
            value += b"\0" if vr == b"UI" else b" "
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH", group, elem) + vr + b"\0\0" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH", group, elem) + vr + struct.pack("<H", len(value)) + value


def instance(study, series, sop, index, pixels):
    ds = b"".join([
        element(0x0008, 0x0016, b"UI", "1.2.840.10008.5.1.4.1.1.4"),
        element(0x0008, 0x0018, b"UI", sop),
        element(0x0008, 0x0060, b"CS", "MR"),
        element(0x0008, 0x0070, b"LO", "BENCH"),
        element(0x0008, 0x103E, b"LO", "t2_tse_sag"),
        element(0x0010, 0x0010, b"PN", "BENCH^PATIENT"),
        element(0x0010, 0x0020, b"LO", "BENCH0001"),
        element(0x0018, 0x0015, b"CS", "LSPINE"),
        element(0x0018, 0x0080, b"DS", "3000"),
        element(0x0018, 0x0081, b"DS", "100"),
        element(0x0020, 0x000D, b"UI", study),
        element(0x0020, 0x000E, b"UI", series),
        element(0x0020, 0x0013, b"IS", str(index + 1)),
        element(0x0020, 0x0032, b"DS", f"{-20.0 + 0.5 * index:.1f}\\-128\\128"),
        element(0x0020, 0x0037, b"DS", "0\\1\\0\\0\\0\\-1"),
        element(0x0028, 0x0002, b"US", struct.pack("<H", 1)),
        element(0x0028, 0x0004, b"CS", "MONOCHROME2"),
        element(0x0028, 0x0010, b"US", struct.pack("<H", 512)),
        element(0x0028, 0x0011, b"US", struct.pack("<H", 512)),
        element(0x0028, 0x0030, b"DS", "0.5\\0.5"),
        element(0x0028, 0x0100, b"US", struct.pack("<H", 16)),
        element(0x0028, 0x0101, b"US", struct.pack("<H", 12)),
        element(0x0028, 0x0102, b"US", struct.pack("<H", 11)),
        element(0x0028, 0x0103, b"US", struct.pack("<H", 0)),
        element(0x7FE0, 0x0010, b"OW", pixels),
    ])
    meta_body = b"".join([
        element(0x0002, 0x0001, b"OB", b"\0\1"),
        element(0x0002, 0x0002, b"UI", "1.2.840.10008.5.1.4.1.1.4"),
        element(0x0002, 0x0003, b"UI", sop),
        element(0x0002, 0x0010, b"UI", "1.2.840.10008.1.2.1"),
        element(0x0002, 0x0012, b"UI", "2.25.1"),
    ])
    meta = element(0x0002, 0x0000, b"UL", struct.pack("<I", len(meta_body))) + meta_body
    return b"\0" * 128 + b"DICM" + meta + ds


def main():
    out, count = sys.argv[1], int(sys.argv[2])
    os.makedirs(out, exist_ok=True)
    root = "2.25.3141592653589793238462643383279"
    row = bytes(struct.pack("<512H", *[(x * 7) % 4096 for x in range(512)]))
    pixels = row * 512
    for i in range(count):
        series = f"{root}.{i // 100 + 1}"
        data = instance(f"{root}.0", series, f"{series}.{i + 1}", i % 100, pixels)
        with open(os.path.join(out, f"mr{i:04d}.dcm"), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
