//! Code-point ranges → sequences of byte ranges, so that the matcher works on bytes only.
//! A range of scalar values becomes a few sequences in which every position is one contiguous
//! byte range (the same shape UTF-8 decoders use: split where the encoded length changes,
//! then where a continuation byte would not cover its full 0x80..=0xBF span).

/// One sequence: position k of the encoded character lies in `ranges[k]` (inclusive).
pub type ByteSeq = Vec<(u8, u8)>;

/// The byte sequences of every Unicode scalar value in `lo..=hi` (surrogates are skipped).
pub fn sequences(lo: u32, hi: u32) -> Vec<ByteSeq> {
    let mut out = Vec::new();
    let hi = hi.min(0x10FFFF);
    // Surrogates are not scalar values: take them out first.
    if lo <= 0xDFFF && hi >= 0xD800 {
        if lo < 0xD800 {
            split(lo, 0xD7FF, &mut out);
        }
        if hi > 0xDFFF {
            split(0xE000, hi, &mut out);
        }
    } else {
        split(lo, hi, &mut out);
    }
    out
}

fn split(lo: u32, hi: u32, out: &mut Vec<ByteSeq>) {
    if lo > hi {
        return;
    }
    // Where the encoded length changes (1, 2, 3, 4 bytes).
    for max in [0x7F, 0x7FF, 0xFFFF] {
        if lo <= max && hi > max {
            split(lo, max, out);
            split(max + 1, hi, out);
            return;
        }
    }
    if hi <= 0x7F {
        out.push(vec![(lo as u8, hi as u8)]);
        return;
    }
    let n = encoded_len(lo);
    // Each trailing group of 6 bits must either be equal at both ends or span 0..=63 fully.
    for i in 1..n {
        let m = (1u32 << (6 * i)) - 1;
        if lo & !m != hi & !m {
            if lo & m != 0 {
                split(lo, lo | m, out);
                split((lo | m) + 1, hi, out);
                return;
            }
            if hi & m != m {
                split(lo, (hi & !m) - 1, out);
                split(hi & !m, hi, out);
                return;
            }
        }
    }
    let (a, b) = (encode(lo), encode(hi));
    out.push((0..n).map(|k| (a[k], b[k])).collect());
}

fn encoded_len(c: u32) -> usize {
    match c {
        0..=0x7F => 1,
        0x80..=0x7FF => 2,
        0x800..=0xFFFF => 3,
        _ => 4,
    }
}

fn encode(c: u32) -> [u8; 4] {
    let mut buf = [0u8; 4];
    match char::from_u32(c) {
        Some(ch) => {
            ch.encode_utf8(&mut buf);
        }
        None => {
            // Only reached for ends of ranges that were split around the surrogates; encode
            // the bits the same way (never emitted as a whole range on their own).
            buf = [
                0xE0 | (c >> 12) as u8,
                0x80 | ((c >> 6) & 0x3F) as u8,
                0x80 | (c & 0x3F) as u8,
                0,
            ];
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(seqs: &[ByteSeq], bytes: &[u8]) -> bool {
        seqs.iter().any(|s| {
            s.len() == bytes.len() && s.iter().zip(bytes).all(|(&(a, b), &x)| a <= x && x <= b)
        })
    }

    /// Every scalar value is matched exactly when it lies in the range, for ranges that cross
    /// every length boundary and the surrogate gap.
    #[test]
    fn ranges_match_exactly_their_characters() {
        for &(lo, hi) in &[
            (0x00, 0x10FFFF),
            (0x23, 0x5B),
            (0x5D, 0x10FFFF),
            (0x7F, 0x800),
            (0x3B1, 0xD812),
            (0xFFFE, 0x10001),
            (0x1F600, 0x1F64F),
        ] {
            let seqs = sequences(lo, hi);
            for c in (0..=0x10FFFFu32)
                .step_by(7)
                .chain([lo, hi, 0x7F, 0x80, 0x7FF, 0x800])
            {
                let Some(ch) = char::from_u32(c) else {
                    continue;
                };
                let mut buf = [0u8; 4];
                let bytes = ch.encode_utf8(&mut buf).as_bytes();
                assert_eq!(
                    matches(&seqs, bytes),
                    lo <= c && c <= hi,
                    "{c:#x} in {lo:#x}..={hi:#x}"
                );
            }
        }
    }
}
