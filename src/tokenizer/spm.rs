//! SentencePiece BPE (`tokenizer.ggml.model = llama`): start from characters, repeatedly merge
//! the adjacent pair whose concatenation is a vocabulary piece with the highest score (leftmost
//! on ties); characters left without a piece fall back to `<0xNN>` byte tokens (or `<unk>`).

use super::table::{Arena, StrTable};
use crate::{Error, Result};
use std::collections::BinaryHeap;

pub(crate) const NONE: u32 = u32::MAX;

pub(crate) struct Spm {
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

impl Spm {
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
        let idx: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let n = idx.len() as u32;
        for (k, &s) in idx.iter().enumerate() {
            let e = idx.get(k + 1).copied().unwrap_or(bytes.len());
            let k = k as u32;
            syms.push((
                s as u32,
                e as u32,
                if k == 0 { NONE } else { k - 1 },
                if k + 1 == n { NONE } else { k + 1 },
            ));
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
