//! SentencePiece BPE (`tokenizer.ggml.model = llama`): start from characters, repeatedly merge
//! the adjacent pair whose concatenation is a vocabulary piece with the highest score (leftmost
//! on ties); characters left without a piece fall back to `<0xNN>` byte tokens (or `<unk>`).

use super::table::{Arena, StrTable};
use crate::{Error, Result};
use std::collections::BinaryHeap;

pub(crate) const NONE: u32 = u32::MAX;

pub(crate) struct Spm {
    /// Pieces with a `▁` after their first character (Gemma 3 has one: `>▁</`), as
    /// (piece, byte offsets of those `▁`). Text is cut into words before each `▁` that none of
    /// them covers: no merge can cross such a cut, so the words encode independently (and can
    /// be cached) with exactly the result of the whole fragment.
    pub crossing: Vec<(Vec<u8>, Vec<usize>)>,
    pub scores: Vec<f32>,
    /// Piece text (with `▁` for spaces) → id, over the normal pieces only: control and byte
    /// tokens must never be produced by merging their spelling.
    pub table: StrTable,
    /// The `<0xNN>` token of each byte (NONE where the vocabulary lacks it).
    pub byte_ids: Option<[u32; 256]>,
    pub unk: Option<u32>,
}

/// A score as a u32 whose integer order is the float's total order.
#[inline]
fn score_key(s: f32) -> u32 {
    let b = s.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

#[derive(Default)]
pub(crate) struct SpmScratch {
    syms: Vec<(u32, u32, u32, u32)>, // (start byte, end byte, prev, next); start == NONE: dead
    // (score key, !pos so that the leftmost wins among equals, left end, right end, merged id)
    heap: BinaryHeap<(u32, u32, u32, u32, u32)>,
}

const SPACE: &[u8] = "▁".as_bytes();

impl Spm {
    /// Whether a word may start at byte `p` of `text` (where a `▁` is).
    pub(crate) fn can_cut(&self, text: &[u8], p: usize) -> bool {
        self.crossing.iter().all(|(piece, offs)| {
            offs.iter()
                .all(|&k| p < k || text.get(p - k..p - k + piece.len()) != Some(piece.as_slice()))
        })
    }

    /// Call `f` with each word of `text` (see `crossing`).
    pub(crate) fn words<'a>(
        &self,
        text: &'a str,
        mut f: impl FnMut(&'a str) -> Result<()>,
    ) -> Result<()> {
        let b = text.as_bytes();
        let mut start = 0;
        let mut p = 1;
        while p + SPACE.len() <= b.len() {
            if &b[p..p + SPACE.len()] == SPACE && self.can_cut(b, p) {
                f(&text[start..p])?;
                start = p;
                p += SPACE.len();
            } else {
                p += 1;
            }
        }
        f(&text[start..])
    }

    /// Encode one fragment (spaces already replaced by `▁`).
    pub(crate) fn encode(
        &self,
        arena: &Arena,
        text: &str,
        sc: &mut SpmScratch,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        let bytes = text.as_bytes();
        let syms = &mut sc.syms;
        let heap = &mut sc.heap;
        syms.clear();
        heap.clear();
        for (k, (s, c)) in text.char_indices().enumerate() {
            let k = k as u32;
            let e = s + c.len_utf8();
            syms.push((s as u32, e as u32, k.wrapping_sub(1), k + 1));
        }
        let n = syms.len() as u32;
        if let Some(last) = syms.last_mut() {
            last.3 = NONE;
        }
        let try_push = |heap: &mut BinaryHeap<_>, syms: &[(u32, u32, u32, u32)], l: u32, r: u32| {
            let (ls, le, _, _) = syms[l as usize];
            let (_, re, _, _) = syms[r as usize];
            if let Some(id) = self.table.get(arena, &bytes[ls as usize..re as usize]) {
                heap.push((score_key(self.scores[id as usize]), !l, le, re, id));
            }
        };
        for k in 1..n {
            try_push(heap, syms, k - 1, k);
        }
        while let Some((_, npos, le, re, _)) = heap.pop() {
            let pos = !npos;
            let (s, e, prev, next) = syms[pos as usize];
            // Stale: the left symbol died or grew, or its right neighbour changed.
            if s == NONE || e != le || next == NONE || syms[next as usize].1 != re {
                continue;
            }
            let after = syms[next as usize].3;
            syms[pos as usize] = (s, re, prev, after);
            syms[next as usize].0 = NONE;
            if after != NONE {
                syms[after as usize].2 = pos;
                try_push(heap, syms, pos, after);
            }
            if prev != NONE {
                try_push(heap, syms, prev, pos);
            }
        }
        let mut k = if n == 0 { NONE } else { 0 };
        while k != NONE {
            let (s, e, _, next) = syms[k as usize];
            let piece = &bytes[s as usize..e as usize];
            if let Some(id) = self.table.get(arena, piece) {
                out.push(id);
            } else if let Some(b) = self
                .byte_ids
                .as_ref()
                .filter(|b| piece.iter().all(|&x| b[x as usize] != NONE))
            {
                out.extend(piece.iter().map(|&x| b[x as usize]));
            } else if let Some(u) = self.unk {
                out.push(u);
            } else {
                return Err(Error::BadModel(format!(
                    "tokenizer: no piece, byte token or <unk> for {:?}",
                    String::from_utf8_lossy(piece)
                )));
            }
            k = next;
        }
        Ok(())
    }
}
