//! A session's KV state: rewind to an earlier position, fork into a new session, and save /
//! restore to bytes or a file.
//!
//! The saved format, version 2 (all numbers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `LLORCHKV` |
//! | 4 | format version (2; version 1 is read too: its field below is 0) |
//! | 4 | the KV values' type: 0 f32, 1 f16 (the session's cache type) |
//! | 8 | the model's identity: a hash of its tensor table (names, types, shapes) and vocabulary (bytes and types of every token) |
//! | 4, 4 | layers, KV values per position (`n_head_kv * head_dim`) |
//! | 8, 8 | sampler seed, generations begun (the next one's random numbers follow from them) |
//! | 4 | `n_past`: tokens whose keys and values are saved |
//! | 4, 4 | 1 and the pending token (sampled, not yet fed), or 0 and 0 |
//! | 4 | reserved, 0 |
//! | 4 × n_past | the tokens in the cache |
//! | 4 (or 2) × 2 × layers × n_past × kv | f32 (or f16) keys then values of each layer, position-major |
//! | 8 | checksum: a hash of every byte before it |
//!
//! Only the `n_past` rows in use are saved, not the whole context, in the type the session's
//! cache holds them (f16 on a GPU by default, or with `kv_type` f16), so a state restores
//! exactly into a session of the same type, on either device. Restored into a session of
//! the other type the rows are converted: f16 widens to f32 exactly; f32 rounds to f16
//! (nearest-even, as an f16 cache stores what a step computes). The hashes detect another
//! model and accidental damage; they are not cryptographic.

use super::Session;
use crate::backend::cpu::fp16::{self, f16};
use crate::backend::kv_values;
use crate::backend::kvpool::Elem;
use crate::model::Model;
use crate::tokenizer::hash_bytes;
use crate::{Error, Result};
use std::path::Path;

const MAGIC: &[u8; 8] = b"LLORCHKV";
/// The format version this build writes (it reads this one and version 1).
pub const STATE_VERSION: u32 = 2;
/// Bytes before the token list.
const HEADER: usize = 64;

/// The model identity saved states are checked against: a hash of the tensor table and the
/// vocabulary (what makes two files the same model for a KV cache).
pub fn model_identity(model: &Model) -> u64 {
    let mut b = Vec::new();
    b.extend_from_slice(model.architecture().as_bytes());
    for t in model.gguf().tensors() {
        b.extend_from_slice(&(t.name.len() as u64).to_le_bytes());
        b.extend_from_slice(t.name.as_bytes());
        b.extend_from_slice(&(t.ty as u32).to_le_bytes());
        b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
    }
    let tok = model.tokenizer();
    for id in 0..tok.vocab_size() as u32 {
        let bytes = tok.token_bytes(id).unwrap_or_default();
        b.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        b.extend_from_slice(&bytes);
        b.push(tok.token_type(id).map_or(0, |t| t as u8));
    }
    hash_bytes(&b)
}

impl Session {
    /// Go back to the first `n_tokens` tokens of the conversation: the next generation
    /// continues from there (the rows after it are overwritten as it goes). `n_tokens` at
    /// most [`tokens`](Self::tokens)`.len()`. A generation in progress is abandoned. The
    /// sampler's seed and generation count stay (a regenerated turn draws new numbers).
    pub fn rewind(&mut self, n_tokens: u32) -> Result<()> {
        let n = n_tokens as usize;
        let have = self.history.len() + self.pending.is_some() as usize;
        if n > have {
            return Err(Error::InvalidArgument(format!(
                "cannot rewind to {n} tokens: the session has {have}"
            )));
        }
        self.running = None;
        if n <= self.history.len() {
            self.history.truncate(n);
            self.pending = None;
            self.state.lock().kv_truncate(n);
        }
        Ok(())
    }

    /// A new session on the same model with a copy of this one's conversation: its tokens,
    /// KV rows, context length, seed and generation count (so both continue alike). A
    /// generation in progress is not carried over.
    /// Both share the KV blocks (a GPU's pages alike; each copies a block before writing
    /// into it); where they cannot (other value types), the rows are copied.
    pub fn fork(&self) -> Result<Session> {
        let mut s = Session::new(
            self.model.clone(),
            super::SessionOptions {
                n_ctx: self.n_ctx as u32,
                seed: self.seed,
                kv_type: self.kv_type,
            },
        )?;
        s.fail_when_busy = self.fail_when_busy;
        let n = self.history.len();
        let shared = s.state.lock().kv_share(&self.state.lock());
        if !shared {
            let rows = self.state.lock().kv_rows(n)?;
            s.state.lock().set_kv_rows(n, &rows, None)?;
        }
        s.state.lock().kv_truncate(n);
        s.history = self.history.clone();
        s.pending = self.pending;
        s.generation = self.generation;
        Ok(s)
    }

    /// The conversation as bytes in the format above (see the module's documentation).
    pub fn save_state(&self) -> Result<Vec<u8>> {
        let dims = self.model.dims();
        let n = self.history.len();
        let kv = self.state.lock().kv_rows(n)?;
        let elem = self.kv_elem();
        let mut b = Vec::new();
        b.try_reserve_exact(HEADER + 4 * n + elem.size() as usize * kv.len() + 8)
            .map_err(|_| {
                Error::OutOfMemory(format!(
                    "a saved state of {n} tokens ({} KV values)",
                    kv.len()
                ))
            })?;
        b.extend_from_slice(MAGIC);
        put32(&mut b, STATE_VERSION);
        put32(&mut b, elem_code(elem));
        b.extend_from_slice(&model_identity(&self.model).to_le_bytes());
        put32(&mut b, dims.n_layer as u32);
        put32(&mut b, dims.kv_dim() as u32);
        b.extend_from_slice(&self.seed.to_le_bytes());
        b.extend_from_slice(&self.generation.to_le_bytes());
        put32(&mut b, n as u32);
        put32(&mut b, self.pending.is_some() as u32);
        put32(&mut b, self.pending.unwrap_or(0));
        put32(&mut b, 0);
        for &t in &self.history {
            put32(&mut b, t);
        }
        match elem {
            Elem::F32 => kv
                .iter()
                .for_each(|x| b.extend_from_slice(&x.to_le_bytes())),
            Elem::F16 => {
                // The cache's own values (widened exactly by kv_rows): rounding restores them.
                let mut h = vec![f16::ZERO; kv.len()];
                fp16::narrow(&kv, &mut h);
                h.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
            }
        }
        let sum = hash_bytes(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        Ok(b)
    }

    /// Replace the conversation with one saved by [`save_state`](Self::save_state) (from a
    /// session of the same model, any context length that holds it, either device, either KV
    /// type: rows of the other type are converted, see the module's notes): tokens, KV rows,
    /// seed and generation count. Everything is checked first; a state of another
    /// model or version, a truncated or damaged one, or one that does not fit this session's
    /// context is an error that leaves the session as it was. (Only a device failure while
    /// uploading the rows can come after the checks: the session is then reset to empty.)
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<()> {
        let saved = parse(bytes, &self.model, self.n_ctx)?;
        let n = saved.history.len();
        // New blocks for the saved rows (the old ones kept until they are in).
        let mut grant = match self.state.lock().paged() {
            true => Some(self.kv_grant(self.model.kv_pool.layout().blocks_for(n))?),
            false => None,
        };
        self.running = None;
        let set = self.state.lock().set_kv_rows(n, &saved.kv, grant.as_mut());
        if let Err(e) = set {
            self.reset();
            return Err(e);
        }
        self.history = saved.history;
        self.pending = saved.pending;
        self.seed = saved.seed;
        self.generation = saved.generation;
        Ok(())
    }

    /// [`save_state`](Self::save_state) into a file (created or replaced).
    pub fn save_state_file(&self, path: &Path) -> Result<()> {
        let bytes = self.save_state()?;
        std::fs::write(path, bytes)
            .map_err(|e| Error::Io(format!("writing the session state {}: {e}", path.display())))
    }

    /// [`restore_state`](Self::restore_state) from a file.
    pub fn restore_state_file(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Io(format!("reading the session state {}: {e}", path.display())))?;
        self.restore_state(&bytes)
    }
}

/// A checked saved state.
struct Saved {
    seed: u64,
    generation: u64,
    history: Vec<u32>,
    pending: Option<u32>,
    kv: Vec<f32>,
}

/// The saved value type's code (see the format).
fn elem_code(e: Elem) -> u32 {
    match e {
        Elem::F32 => 0,
        Elem::F16 => 1,
    }
}

fn put32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn bad(what: String) -> Error {
    Error::InvalidArgument(format!("session state: {what}"))
}

/// Checks `b` against `model` and a context of `n_ctx` tokens, field by field, and reads it.
fn parse(b: &[u8], model: &Model, n_ctx: usize) -> Result<Saved> {
    if b.len() < 12 || &b[..8] != MAGIC {
        return Err(bad(format!(
            "not a llorch session state ({} bytes, no '{}' magic at the start)",
            b.len(),
            String::from_utf8_lossy(MAGIC)
        )));
    }
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let version = u32_at(8);
    if !(1..=STATE_VERSION).contains(&version) {
        return Err(bad(format!(
            "format version {version}; this build reads versions 1 to {STATE_VERSION}"
        )));
    }
    if b.len() < HEADER + 8 {
        return Err(bad(format!(
            "truncated: {} bytes, shorter than the {}-byte header",
            b.len(),
            HEADER + 8
        )));
    }
    if u64_at(16) != model_identity(model) {
        return Err(bad(
            "saved from another model (its tensor table or vocabulary differs from this session's model)"
                .into(),
        ));
    }
    let dims = model.dims();
    let (n_layer, kv_dim) = (u32_at(24) as usize, u32_at(28) as usize);
    if (n_layer, kv_dim) != (dims.n_layer, dims.kv_dim()) {
        return Err(bad(format!(
            "shaped for {n_layer} layers of {kv_dim} KV values, the model has {} of {}",
            dims.n_layer,
            dims.kv_dim()
        )));
    }
    let elem = match u32_at(12) {
        0 => Elem::F32,
        1 if version >= 2 => Elem::F16,
        c => return Err(bad(format!("KV value type {c} (0 f32 or 1 f16 expected)"))),
    };
    let n = u32_at(48) as usize;
    let pending = match u32_at(52) {
        0 => None,
        1 => Some(u32_at(56)),
        f => return Err(bad(format!("pending-token flag {f} (0 or 1 expected)"))),
    };
    let expect = kv_values(&dims, n)
        .and_then(|v| v.checked_mul(elem.size() as usize))
        .and_then(|v| v.checked_add(HEADER + 8))
        .and_then(|v| v.checked_add(n.checked_mul(4)?))
        .ok_or_else(|| bad(format!("{n} tokens: the size overflows")))?;
    if b.len() != expect {
        return Err(bad(format!(
            "{} bytes where {n} tokens take {expect}: {}",
            b.len(),
            if b.len() < expect {
                "truncated"
            } else {
                "trailing bytes"
            }
        )));
    }
    let body = expect - 8;
    if hash_bytes(&b[..body]) != u64_at(body) {
        return Err(bad(
            "damaged: the checksum does not match its contents".into()
        ));
    }
    let in_ctx = n + pending.is_some() as usize;
    if in_ctx > n_ctx {
        return Err(Error::ContextFull(format!(
            "the saved session holds {in_ctx} tokens, more than this session's context of {n_ctx}"
        )));
    }
    let vocab = model.vocab_size();
    let history: Vec<u32> = (0..n).map(|i| u32_at(HEADER + 4 * i)).collect();
    if let Some(&t) = history
        .iter()
        .chain(&pending)
        .find(|&&t| t as usize >= vocab)
    {
        return Err(bad(format!(
            "token id {t} outside the vocabulary of {vocab}"
        )));
    }
    let rows = &b[HEADER + 4 * n..body];
    let kv = match elem {
        Elem::F32 => rows
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Elem::F16 => rows
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    };
    Ok(Saved {
        seed: u64_at(32),
        generation: u64_at(40),
        history,
        pending,
        kv,
    })
}
