#!/usr/bin/env python3
"""Independent reference reader for Tern's sparse weight blobs (docs/SPARSE_FORMATS.md).

Written from the spec alone (not from Tern's C/Swift code).  It finds every sparse blob
(a GGUF tensor of type I8 whose bytes start with the magic "TSPR"), checks every byte-level
rule of the spec, and decodes each matrix to dense float32 (R x C, row-major).

    python3 scripts/sparse_reference.py MODEL.gguf
        [--source DENSE_F32.gguf]   # also check pruning / pattern / magnitude / re-quantization
        [--write-dense DIR]         # write DIR/<name>.f32 + DIR/manifest.json
        [--quiet]

Exit status: 0 when no violation was found, 1 otherwise (2 for usage / unreadable file).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys

import numpy as np

try:
    from gguf import GGUFReader
except ImportError:  # pragma: no cover
    print("sparse_reference.py needs the `gguf` package (pip install gguf)", file=sys.stderr)
    sys.exit(2)

MAGIC = b"TSPR"
HEADER_BYTES = 128
LAYOUT_GROUP, LAYOUT_BITMASK, LAYOUT_24 = 1, 2, 3
LAYOUT_NAMES = {LAYOUT_GROUP: "group", LAYOUT_BITMASK: "bitmask", LAYOUT_24: "2:4"}
PATTERN_OF_LAYOUT = {LAYOUT_GROUP: "group", LAYOUT_BITMASK: "unstructured", LAYOUT_24: "2:4"}

# GGML type ids and block sizes (bytes per block of 32 weights).
GGML_Q4_0, GGML_Q4_1, GGML_Q8_0 = 2, 3, 8
GGML_NAMES = {GGML_Q4_0: "Q4_0", GGML_Q4_1: "Q4_1", GGML_Q8_0: "Q8_0"}
BLOCK_BYTES = {GGML_Q4_0: 18, GGML_Q4_1: 20, GGML_Q8_0: 34}
# general.file_type (llama_ftype) of each value type.
FILE_TYPE_OF = {GGML_Q4_0: 2, GGML_Q4_1: 3, GGML_Q8_0: 7}
CHUNK_24_BYTES = 14
PROJECTIONS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")

POPCOUNT4 = [bin(i).count("1") for i in range(16)]


class BlobError(Exception):
    """A violation that stops parsing of one blob."""


def f16(b: bytes, off: int) -> np.float32:
    return np.float32(np.frombuffer(b, dtype="<f2", count=1, offset=off)[0])


def popcount32(x: int) -> int:
    return bin(x & 0xFFFFFFFF).count("1")


# --------------------------------------------------------------------------------------------
# Header


class Header:
    FMT = "<4sHHII" + "Q" * 8 + "48s"

    def __init__(self, blob: bytes):
        if len(blob) < HEADER_BYTES:
            raise BlobError(f"blob is {len(blob)} bytes, shorter than the {HEADER_BYTES}-byte header")
        (self.magic, self.version, self.layout, self.value_type, self.zero12, self.rows, self.cols,
         self.k, self.stored, self.index_off, self.index_bytes, self.values_off, self.values_bytes,
         self.zero80) = struct.unpack_from(self.FMT, blob, 0)


def check_header(h: Header, blob_len: int, errs: list[str], notes: list[str]) -> None:
    """Raise BlobError for anything that makes the rest unparseable; append other violations."""
    if h.magic != MAGIC:
        raise BlobError(f"bad magic {h.magic!r}")
    if h.version != 1:
        raise BlobError(f"unsupported version {h.version}")
    if h.layout not in LAYOUT_NAMES:
        raise BlobError(f"unknown layout {h.layout}")
    if h.zero12 != 0:
        errs.append(f"header bytes 12..15 are {h.zero12:#x}, not zero")
    if any(h.zero80):
        errs.append("header bytes 80..127 are not all zero")
    if h.layout == LAYOUT_GROUP:
        if h.value_type not in BLOCK_BYTES:
            raise BlobError(f"group layout with unsupported value type {h.value_type}")
    elif h.value_type != GGML_Q4_0:
        raise BlobError(f"{LAYOUT_NAMES[h.layout]} layout needs value type Q4_0 (2), got {h.value_type}")
    if h.cols == 0 or h.cols % 32:
        raise BlobError(f"columns {h.cols} is not a positive multiple of 32")
    if h.rows == 0:
        errs.append("rows is 0")
    nchunks = h.cols // 32
    if h.layout == LAYOUT_GROUP:
        if h.k > nchunks:
            raise BlobError(f"K = {h.k} exceeds the {nchunks} chunks per row")
    elif h.k != 0:
        errs.append(f"K field is {h.k}, must be 0 for the {LAYOUT_NAMES[h.layout]} layout")
    # Section bounds and alignment.
    for name, off, size in (("index", h.index_off, h.index_bytes), ("values", h.values_off, h.values_bytes)):
        if off % 32:
            errs.append(f"{name} section offset {off} is not a multiple of 32")
        if off < HEADER_BYTES and size > 0:
            raise BlobError(f"{name} section offset {off} overlaps the header")
        if off + size > blob_len:
            raise BlobError(f"{name} section [{off}, {off + size}) runs past the blob's {blob_len} bytes")
    if h.index_bytes and h.values_bytes:
        a0, a1 = h.index_off, h.index_off + h.index_bytes
        b0, b1 = h.values_off, h.values_off + h.values_bytes
        if a0 < b1 and b0 < a1:
            raise BlobError("index and values sections overlap")
    # Expected sizes.
    if h.layout == LAYOUT_GROUP:
        exp_index, exp_values = h.rows * h.k * 2, h.rows * h.k * BLOCK_BYTES[h.value_type]
    elif h.layout == LAYOUT_24:
        exp_index, exp_values = 0, h.rows * nchunks * CHUNK_24_BYTES
    else:
        exp_index, exp_values = (h.rows + 1) * 8, None  # values size checked against the offsets
    if h.index_bytes != exp_index:
        raise BlobError(f"index section is {h.index_bytes} bytes, expected {exp_index}")
    if exp_values is not None and h.values_bytes != exp_values:
        raise BlobError(f"values section is {h.values_bytes} bytes, expected {exp_values}")
    # Bytes of the blob outside header and sections.  The spec does not describe any; Tern pads
    # the gap before the values section (alignment) and the blob's end to a multiple of 32 with
    # zeros.  Report anything else.
    end = max(HEADER_BYTES, h.index_off + h.index_bytes, h.values_off + h.values_bytes)
    if end != blob_len and not (blob_len % 32 == 0 and blob_len - end < 32):
        notes.append(f"blob has {blob_len - end} bytes after its last section")


# --------------------------------------------------------------------------------------------
# Decoding


def decode_group_block(vt: int, b: bytes, off: int) -> np.ndarray:
    if vt == GGML_Q4_0:
        d = f16(b, off)
        qs = np.frombuffer(b, dtype=np.uint8, count=16, offset=off + 2)
        q = np.concatenate([qs & 0x0F, qs >> 4]).astype(np.float32)
        return d * (q - np.float32(8))
    if vt == GGML_Q4_1:
        d, m = f16(b, off), f16(b, off + 2)
        qs = np.frombuffer(b, dtype=np.uint8, count=16, offset=off + 4)
        q = np.concatenate([qs & 0x0F, qs >> 4]).astype(np.float32)
        return d * q + m
    d = f16(b, off)
    q = np.frombuffer(b, dtype=np.int8, count=32, offset=off + 2).astype(np.float32)
    return d * q


def unpack_nibbles(b: bytes, off: int, n: int) -> np.ndarray:
    """n 4-bit values: value i in byte i/2, low nibble for even i, high nibble for odd i."""
    raw = np.frombuffer(b, dtype=np.uint8, count=(n + 1) // 2, offset=off)
    out = np.empty(2 * len(raw), dtype=np.uint8)
    out[0::2] = raw & 0x0F
    out[1::2] = raw >> 4
    return out[:n]


def mask_columns(mask: int) -> np.ndarray:
    return np.array([p for p in range(32) if (mask >> p) & 1], dtype=np.int64)


class Decoded:
    def __init__(self, h: Header):
        self.h = h
        self.dense = np.zeros((h.rows, h.cols), dtype=np.float32)
        self.kept = np.zeros((h.rows, h.cols), dtype=bool)
        self.index = None            # group: (R, K) chunk numbers
        self.chunk_bytes = {}        # (row, chunk) -> stored bytes (2:4 / bitmask)
        self.stored = 0


def decode(blob: bytes, h: Header, errs: list[str], notes: list[str]) -> Decoded:
    dec = Decoded(h)
    R, C = h.rows, h.cols
    nchunks = C // 32
    if h.layout == LAYOUT_GROUP:
        K = h.k
        idx = np.frombuffer(blob, dtype="<u2", count=R * K, offset=h.index_off).astype(np.int64).reshape(R, K)
        dec.index = idx
        bb = BLOCK_BYTES[h.value_type]
        bad_rows = 0
        for r in range(R):
            row = idx[r]
            if np.any(row >= nchunks):
                raise BlobError(f"row {r}: chunk number {int(row.max())} out of range (row has {nchunks} chunks)")
            if K > 1 and np.any(np.diff(row) <= 0):
                bad_rows += 1
                if bad_rows <= 3:
                    errs.append(f"row {r}: chunk numbers {row.tolist()} are not strictly increasing")
            for k in range(K):
                c = int(row[k])
                vals = decode_group_block(h.value_type, blob, h.values_off + (r * K + k) * bb)
                dec.dense[r, 32 * c:32 * c + 32] = vals
                dec.kept[r, 32 * c:32 * c + 32] = True
        if bad_rows > 3:
            errs.append(f"... {bad_rows} rows in all have chunk numbers that are not strictly increasing")
        dec.stored = R * K * 32
        nonfinite = int(np.count_nonzero(~np.isfinite(dec.dense)))
        if nonfinite:
            errs.append(f"{nonfinite} decoded weights are not finite")
        return dec

    if h.layout == LAYOUT_24:
        bad_nibbles = 0
        for r in range(R):
            for c in range(nchunks):
                off = h.values_off + (r * nchunks + c) * CHUNK_24_BYTES
                mask = struct.unpack_from("<I", blob, off)[0]
                nib = [(mask >> (4 * g)) & 0xF for g in range(8)]
                bad = [g for g in range(8) if POPCOUNT4[nib[g]] != 2]
                if bad:
                    bad_nibbles += len(bad)
                    if bad_nibbles <= 3:
                        errs.append(f"row {r} chunk {c}: mask {mask:#010x} has nibble(s) {bad} without exactly two bits")
                    continue
                d = f16(blob, off + 4)
                if not math.isfinite(float(d)):
                    errs.append(f"row {r} chunk {c}: d is {float(d)}")
                q = unpack_nibbles(blob, off + 6, 16).astype(np.float32)
                cols = 32 * c + mask_columns(mask)
                dec.dense[r, cols] = d * (q - np.float32(8))
                dec.kept[r, cols] = True
                dec.chunk_bytes[(r, c)] = bytes(blob[off:off + CHUNK_24_BYTES])
        if bad_nibbles > 3:
            errs.append(f"... {bad_nibbles} mask nibbles in all without exactly two bits")
        if bad_nibbles:
            raise BlobError("2:4 masks are malformed")
        dec.stored = R * C // 2
        return dec

    # Bitmask.
    offs = np.frombuffer(blob, dtype="<u8", count=R + 1, offset=h.index_off).astype(object)
    vb = h.values_bytes
    if offs[0] != 0:
        errs.append(f"row offset 0 is {offs[0]}, expected 0")
    for r in range(R):
        if offs[r + 1] < offs[r]:
            raise BlobError(f"row offsets decrease at row {r}: {offs[r]} then {offs[r + 1]}")
    if offs[R] + 16 > vb:
        raise BlobError(f"last row offset {offs[R]} + 16 padding bytes runs past the {vb}-byte values section")
    if offs[R] + 16 != vb:
        errs.append(f"values section is {vb} bytes, expected last row offset {offs[R]} + 16 = {offs[R] + 16}")
    pad = blob[h.values_off + offs[R]:h.values_off + offs[R] + 16]
    if any(pad):
        errs.append(f"the 16 padding bytes after the last row are not zero: {bytes(pad).hex()}")
    odd_nibbles = 0
    stored = 0
    for r in range(R):
        pos = int(offs[r])
        end = int(offs[r + 1])
        for c in range(nchunks):
            if pos + 4 > end:
                raise BlobError(f"row {r} chunk {c}: chunk starts at values byte {pos}, past the row's end {end}")
            cstart = pos
            mask = struct.unpack_from("<I", blob, h.values_off + pos)[0]
            pos += 4
            if mask:
                n = popcount32(mask)
                nq = (n + 1) // 2
                if pos + 2 + nq > end:
                    raise BlobError(f"row {r} chunk {c}: chunk of {6 + nq} bytes runs past the row's end {end}")
                d = f16(blob, h.values_off + pos)
                if not math.isfinite(float(d)):
                    errs.append(f"row {r} chunk {c}: d is {float(d)}")
                q = unpack_nibbles(blob, h.values_off + pos + 2, n).astype(np.float32)
                if n % 2 and blob[h.values_off + pos + 2 + nq - 1] >> 4:
                    odd_nibbles += 1
                pos += 2 + nq
                cols = 32 * c + mask_columns(mask)
                dec.dense[r, cols] = d * (q - np.float32(8))
                dec.kept[r, cols] = True
                stored += n
            dec.chunk_bytes[(r, c)] = bytes(blob[h.values_off + cstart:h.values_off + pos])
        if pos != end:
            raise BlobError(f"row {r}: its chunks end at values byte {pos}, but the next row offset is {end}")
    if odd_nibbles:
        notes.append(f"{odd_nibbles} chunks with an odd count have a non-zero unused high nibble "
                     "(the spec does not say what it holds)")
    dec.stored = stored
    return dec


# --------------------------------------------------------------------------------------------
# Re-quantization (spec rule for 2:4 / bitmask; GGML reference rules for the group layout)


def quantize_kept_chunk(mask: int, w: np.ndarray) -> bytes:
    """The spec's 2:4/bitmask rule for one chunk; w = the 32 source weights of the chunk."""
    if mask == 0:
        return struct.pack("<I", 0)
    kept = w[mask_columns(mask)].astype(np.float32)
    m = kept[int(np.argmax(np.abs(kept)))]          # first on ties
    d = np.float32(m / np.float32(-8.0))
    idv = np.float32(np.float32(1.0) / d) if d != 0 else np.float32(0.0)
    t = (kept * idv + np.float32(8.5)).astype(np.float32)
    q = np.minimum(15, np.maximum(0, np.trunc(t))).astype(np.uint8)
    if len(q) % 2:
        q = np.append(q, np.uint8(0))
    packed = (q[0::2] | (q[1::2] << 4)).astype(np.uint8)
    return struct.pack("<I", mask) + np.float16(d).tobytes() + packed.tobytes()


def ggml_quantize_block(vt: int, x: np.ndarray) -> bytes:
    """GGML's reference quantizers (quantize_row_*_ref) for one block of 32 float32 weights."""
    x = x.astype(np.float32)
    if vt == GGML_Q4_0:
        i = int(np.argmax(np.abs(x)))
        d = np.float32(x[i] / np.float32(-8.0))
        idv = np.float32(np.float32(1.0) / d) if d != 0 else np.float32(0.0)
        q = np.minimum(15, np.trunc((x * idv + np.float32(8.5)).astype(np.float32))).astype(np.uint8)
        return np.float16(d).tobytes() + (q[:16] | (q[16:] << 4)).astype(np.uint8).tobytes()
    if vt == GGML_Q4_1:
        mn, mx = np.float32(x.min()), np.float32(x.max())
        d = np.float32((mx - mn) / np.float32(15.0))
        idv = np.float32(np.float32(1.0) / d) if d != 0 else np.float32(0.0)
        q = np.minimum(15, np.trunc(((x - mn) * idv + np.float32(0.5)).astype(np.float32))).astype(np.uint8)
        return (np.float16(d).tobytes() + np.float16(mn).tobytes()
                + (q[:16] | (q[16:] << 4)).astype(np.uint8).tobytes())
    amax = np.float32(np.abs(x).max())
    d = np.float32(amax / np.float32(127.0))
    idv = np.float32(np.float32(1.0) / d) if d != 0 else np.float32(0.0)
    v = (x * idv).astype(np.float32)  # roundf: half away from zero
    q = (np.sign(v) * np.floor(np.abs(v).astype(np.float64) + 0.5)).astype(np.int8)  # exact, unlike f32 +0.5
    return np.float16(d).tobytes() + q.tobytes()


# --------------------------------------------------------------------------------------------
# Checks against the dense source


def check_against_source(name: str, dec: Decoded, blob: bytes, W: np.ndarray, meta: dict,
                         errs: list[str], notes: list[str], info: list[str]) -> None:
    h = dec.h
    R, C = h.rows, h.cols
    if W.shape != (R, C):
        errs.append(f"source tensor is {W.shape[0]}x{W.shape[1]}, blob says {R}x{C}")
        return
    nchunks = C // 32
    # Pruned weights are exactly zero (and nothing outside the kept set was decoded).
    nz = int(np.count_nonzero(dec.dense[~dec.kept]))
    if nz:
        errs.append(f"{nz} pruned weights decode to non-zero values")
    absw = np.abs(W.astype(np.float64))
    target = meta.get("tern.sparsity.target")
    method = meta.get("tern.sparsity.method")
    pattern = PATTERN_OF_LAYOUT[h.layout]
    if meta.get("tern.sparsity.pattern") not in (None, pattern):
        errs.append(f"tern.sparsity.pattern is {meta.get('tern.sparsity.pattern')!r} but the blob is {pattern}")

    if h.layout == LAYOUT_BITMASK:
        counts = dec.kept.sum(axis=1)
        if target is not None:
            x = C * (1.0 - float(target))
            allowed = {int(math.floor(x + 0.5)), int(round(x))}  # half-up and half-even agree except at .5
            bad = [r for r in range(R) if int(counts[r]) not in allowed]
            if bad:
                errs.append(f"{len(bad)} rows do not keep round({C}*(1-{target})) = {sorted(allowed)} weights "
                            f"(row {bad[0]} keeps {int(counts[bad[0]])})")
        if method == "magnitude":
            viol = 0
            for r in range(R):
                k, p = absw[r][dec.kept[r]], absw[r][~dec.kept[r]]
                if len(k) and len(p) and k.min() < p.max():
                    viol += 1
            if viol:
                errs.append(f"magnitude: {viol} rows keep a weight smaller in |w| than one they prune")
    elif h.layout == LAYOUT_24:
        g = dec.kept.reshape(R, C // 4, 4)
        if np.any(g.sum(axis=2) != 2):
            errs.append("some groups of 4 do not keep exactly 2 weights")
        if method == "magnitude":
            a = absw.reshape(R, C // 4, 4)
            kmin = np.where(g, a, np.inf).min(axis=2)
            pmax = np.where(~g, a, -np.inf).max(axis=2)
            viol = int(np.count_nonzero(kmin < pmax))
            if viol:
                errs.append(f"magnitude: {viol} groups of 4 keep a weight smaller in |w| than one they prune")
    else:
        K = h.k
        if target is not None:
            x = nchunks * (1.0 - float(target))
            if K not in {int(math.floor(x + 0.5)), int(round(x)), int(math.floor(x)), int(math.ceil(x))}:
                errs.append(f"K = {K} is far from {nchunks} chunks * (1 - {target})")
            else:
                info.append(f"K = {K} of {nchunks} chunks")
        grows = meta.get("tern.sparsity.group_rows")
        g = int(grows) if grows is not None else 1
        if grows is None:
            notes.append("no tern.sparsity.group_rows key; treating rows as free (g = 1)")
        sets = [tuple(sorted(dec.index[r].tolist())) for r in range(R)]
        diff_groups = 0
        for r0 in range(0, R, g):
            if len(set(sets[r0:r0 + g])) != 1:
                diff_groups += 1
        if diff_groups:
            errs.append(f"{diff_groups} aligned groups of {g} rows do not share their kept chunks")
        if R % g:
            notes.append(f"rows {R} is not a multiple of group_rows {g}; the last group has {R % g} rows")
        if method == "magnitude":
            csum = absw.reshape(R, nchunks, 32).sum(axis=2)  # (R, nchunks)
            viol = near = 0
            for r0 in range(0, R, g):
                score = csum[r0:r0 + g].sum(axis=0)
                keptc = np.zeros(nchunks, dtype=bool)
                keptc[list(sets[r0])] = True
                if keptc.all() or not keptc.any():
                    continue
                kmin, pmax = score[keptc].min(), score[~keptc].max()
                tol = 1e-5 * max(abs(kmin), abs(pmax), 1e-30)
                if kmin < pmax - tol:
                    viol += 1
                elif kmin < pmax:
                    near += 1
            if viol:
                errs.append(f"magnitude: {viol} row groups keep a chunk with a smaller sum of |w| than one they prune")
            if near:
                notes.append(f"magnitude: {near} row groups keep a chunk whose score is below a pruned one's "
                             "by less than 1e-5 relative (treated as a tie)")

    if method not in (None, "magnitude"):
        notes.append(f"method {method!r}: kept-weight ranking not checked (needs calibration data)")

    # Re-quantization.
    if h.layout in (LAYOUT_24, LAYOUT_BITMASK):
        differ, first = 0, None
        for r in range(R):
            for c in range(nchunks):
                stored = dec.chunk_bytes[(r, c)]
                mask = struct.unpack_from("<I", stored, 0)[0]
                want = quantize_kept_chunk(mask, W[r, 32 * c:32 * c + 32])
                if h.layout == LAYOUT_24 or len(want) == len(stored):
                    same = want == stored
                else:
                    same = False
                if not same:
                    differ += 1
                    if first is None:
                        first = (r, c, stored.hex(), want.hex())
        if differ:
            r, c, s, w = first
            errs.append(f"re-quantization: {differ} of {R * nchunks} chunks differ from the spec's rule "
                        f"(first: row {r} chunk {c}: stored {s}, expected {w})")
        else:
            info.append(f"re-quantization: all {R * nchunks} chunks byte-identical")
    else:
        bb = BLOCK_BYTES[h.value_type]
        differ, first = 0, None
        for r in range(R):
            for k in range(h.k):
                c = int(dec.index[r, k])
                off = h.values_off + (r * h.k + k) * bb
                stored = bytes(blob[off:off + bb])
                want = ggml_quantize_block(h.value_type, W[r, 32 * c:32 * c + 32])
                if stored != want:
                    differ += 1
                    if first is None:
                        first = (r, c, stored.hex(), want.hex())
        total = R * h.k
        if differ:
            r, c, s, w = first
            # The spec only says "GGML's own block layouts", not which quantizer fills them: a note.
            notes.append(f"GGML reference quantizer: {differ} of {total} blocks differ "
                         f"(first: row {r} chunk {c}: stored {s}, ggml-ref {w})")
        else:
            info.append(f"GGML reference re-quantization: all {total} blocks byte-identical")


# --------------------------------------------------------------------------------------------


def read_meta(reader: GGUFReader) -> dict:
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("general.") or key.startswith("tern."):
            try:
                meta[key] = field.contents()
            except Exception:  # noqa: BLE001
                pass
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="GGUF file with sparse blobs")
    ap.add_argument("--source", help="the dense F32 GGUF the sparse file was converted from")
    ap.add_argument("--write-dense", metavar="DIR", help="write DIR/<tensor>.f32 and DIR/manifest.json")
    ap.add_argument("--quiet", action="store_true", help="print only violations and the final line")
    args = ap.parse_args(argv)

    try:
        reader = GGUFReader(args.model)
    except Exception as e:  # noqa: BLE001
        print(f"error: cannot read {args.model}: {e}", file=sys.stderr)
        return 2
    meta = read_meta(reader)
    src = {}
    if args.source:
        sreader = GGUFReader(args.source)
        for t in sreader.tensors:
            if t.tensor_type.name == "F32":
                src[t.name] = np.asarray(t.data, dtype=np.float32).reshape(
                    [int(x) for x in reversed(list(t.shape))])

    def out(s: str) -> None:
        if not args.quiet:
            print(s)

    out(f"{args.model}")
    out("  metadata: " + ", ".join(f"{k}={meta[k]!r}" for k in sorted(meta) if k.startswith("tern.")
                                   or k == "general.file_type"))
    total_violations = 0
    manifest = []
    file_errs: list[str] = []
    sparse_names = set()
    value_types = set()
    for t in reader.tensors:
        if t.tensor_type.name != "I8":
            continue
        blob = np.asarray(t.data, dtype=np.int8).tobytes()
        if blob[:4] != MAGIC:
            if blob[:4] in (MAGIC[::-1], MAGIC.lower()) or blob[:2] == b"TS":
                file_errs.append(f"{t.name}: I8 tensor starts with {blob[:4]!r}, which looks like a damaged magic")
            else:
                out(f"  {t.name}: I8 tensor without the TSPR magic, not a sparse blob")
            continue
        sparse_names.add(t.name)
        errs: list[str] = []
        notes: list[str] = []
        info: list[str] = []
        if len(t.shape) != 1:
            errs.append(f"shape {list(t.shape)} is not one-dimensional [B]")
        dec = None
        try:
            h = Header(blob)
            check_header(h, len(blob), errs, notes)
            covered = np.zeros(len(blob), dtype=bool)
            covered[:HEADER_BYTES] = True
            covered[h.index_off:h.index_off + h.index_bytes] = True
            covered[h.values_off:h.values_off + h.values_bytes] = True
            stray = np.frombuffer(blob, dtype=np.uint8)[~covered]
            if np.any(stray):
                notes.append(f"{int(np.count_nonzero(stray))} non-zero bytes outside the header and "
                             "sections (the spec does not say what such bytes hold)")
            value_types.add(h.value_type)
            dec = decode(blob, h, errs, notes)
            if h.stored != dec.stored:
                errs.append(f"header says {h.stored} stored weights, the masks/K imply {dec.stored}")
        except BlobError as e:
            errs.append(str(e))
        if dec is not None and args.source:
            W = src.get(t.name)
            if W is None:
                errs.append("no F32 tensor of this name in the source")
            else:
                check_against_source(t.name, dec, blob, W, meta, errs, notes, info)
        if dec is not None:
            h = dec.h
            dens = dec.stored / (h.rows * h.cols) if h.rows else 0.0
            out(f"  {t.name}: {LAYOUT_NAMES[h.layout]} {GGML_NAMES[h.value_type]} {h.rows}x{h.cols}"
                + (f" K={h.k}" if h.layout == LAYOUT_GROUP else "")
                + f" stored={dec.stored} density={dens:.4f} bytes={len(blob)}"
                + (" OK" if not errs else f" {len(errs)} VIOLATION(S)"))
            manifest.append({"name": t.name, "rows": h.rows, "columns": h.cols,
                             "layout": LAYOUT_NAMES[h.layout], "value_type": GGML_NAMES[h.value_type],
                             "stored_weights": dec.stored, "file": t.name + ".f32"})
        else:
            print(f"  {t.name}: REJECTED")
        for s in info:
            out(f"      {s}")
        for s in notes:
            out(f"      note: {s}")
        for s in errs:
            print(f"      VIOLATION: {s}" if dec is not None else f"      VIOLATION ({t.name}): {s}")
        total_violations += len(errs)
        if dec is not None and args.write_dense:
            os.makedirs(args.write_dense, exist_ok=True)
            dec.dense.astype("<f4").tofile(os.path.join(args.write_dense, t.name + ".f32"))

    # File-level checks.
    names = {t.name for t in reader.tensors}
    expected = {n for n in names if n.startswith("blk.") and n.split(".")[2] in PROJECTIONS
                and n.endswith(".weight")}
    if sparse_names and expected != sparse_names:
        missing = sorted(expected - sparse_names)
        extra = sorted(sparse_names - expected)
        if missing:
            file_errs.append(f"projections stored dense: {missing}")
        if extra:
            out(f"  note: sparse tensors that are not layer projections: {extra}")
    if sparse_names:
        ft = meta.get("general.file_type")
        want = {FILE_TYPE_OF[v] for v in value_types if v in FILE_TYPE_OF}
        if ft is not None and len(want) == 1 and ft not in want:
            out(f"  note: general.file_type = {ft}, blobs store {[GGML_NAMES[v] for v in value_types]}")
        for key in ("tern.sparsity.pattern", "tern.sparsity.target", "tern.sparsity.method"):
            if key not in meta:
                out(f"  note: metadata key {key} is missing")
    for s in file_errs:
        print(f"  VIOLATION: {s}")
    total_violations += len(file_errs)

    if args.write_dense and manifest:
        with open(os.path.join(args.write_dense, "manifest.json"), "w") as f:
            json.dump({"model": os.path.basename(args.model),
                       "source": os.path.basename(args.source) if args.source else None,
                       "metadata": {k: (float(v) if isinstance(v, (float, np.floating)) else v)
                                    for k, v in sorted(meta.items()) if k.startswith("tern.")},
                       "format": "raw little-endian float32, row-major rows x columns",
                       "tensors": manifest}, f, indent=2)
            f.write("\n")

    print(f"{len(sparse_names)} sparse tensors, {total_violations} violation(s)"
          + (f"; dense matrices written to {args.write_dense}" if args.write_dense and manifest else ""))
    return 1 if total_violations else 0


if __name__ == "__main__":
    sys.exit(main())
