//! The limits a chat template renders within, and the budget that enforces them while it runs.
//!
//! A template is code from the model file (or the caller): without limits one line can ask for a
//! terabyte string, a list nested a million deep or a loop of ten billion steps. Real templates
//! (Qwen2.5, SmolLM2, Gemma 3 …) stay orders of magnitude below every limit here.

use minijinja::value::{Value, ValueKind};
use minijinja::{Error as JinjaError, ErrorKind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes of template source.
pub const TEMPLATE_BYTES: usize = 1 << 20;
/// VM instructions (minijinja's fuel, our guards included). Real templates spend 37-45 a
/// message (SmolLM2, Qwen2.5): 10,000 messages take a quarter of it.
pub const FUEL: u64 = 2_000_000;
/// Nesting depth of a value (lists in lists, maps in maps …); also stops cycles.
pub const DEPTH: usize = 128;
/// Bytes of one string a template builds (2M tokens: beyond the context of nearly every model).
pub const STRING_BYTES: u64 = 8 << 20;
/// Items of one list a template builds (`*`, `+`, `batch`, `slice`).
pub const ITEMS: u64 = 1 << 18;
/// Bytes of text written, the rendered text and captures (`{% set %}…`, macro calls) together.
pub const OUTPUT_BYTES: u64 = 32 << 20;
/// Work units, each about a nanosecond of work on a busy 2-core machine: a byte copied, compared
/// or written costs 1, a value visited `NODE_COST`; strings handed to a filter or method cost
/// more a byte (guard.rs). An eighth of a second on a quiet machine, well under a second on a
/// loaded one; real templates spend 5-9 units a byte of output (SmolLM2, Qwen2.5 over 10,000
/// messages): 10,000 messages take a tenth.
pub const WORK: u64 = 128 << 20;
/// A value visited (a pointer chase, a match, a clone, an iterator step: 100-250 ns measured
/// on a shared machine for a value of a lazy list).
pub const NODE_COST: u64 = 128;
/// Wall-clock time, a backstop: the limits above end a hostile template well before it.
pub const TIME: Duration = Duration::from_millis(800);
/// Stack of the rendering thread: minijinja recurses natively (macros and recursive loops up to
/// its recursion limit, values up to `DEPTH`), whatever stack the caller's thread has. Macros
/// recursing to that limit need between 256 and 512 KiB (release build): 32 times that.
pub const STACK_BYTES: usize = 16 << 20;

/// What one render may still spend; shared by the guards, the formatter and the filters.
pub struct Budget {
    work_left: AtomicU64,
    /// Bytes written so far (into the result or into a capture: `{% set %}`, a macro's text).
    emitted: AtomicU64,
    calls: AtomicU64,
    deadline: Instant,
    /// The first limit hit: the render's error whatever the template does after it.
    tripped: Mutex<Option<String>>,
}

impl Budget {
    /// A full budget; the clock starts now.
    pub fn starting_now() -> Budget {
        Budget {
            work_left: AtomicU64::new(WORK),
            emitted: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            deadline: Instant::now() + TIME,
            tripped: Mutex::new(None),
        }
    }

    /// A limit error naming `limit` (the words tests and users look for), remembered as the
    /// render's outcome.
    pub fn exceeded(&self, limit: &str, detail: String) -> JinjaError {
        let msg = format!("{limit} limit exceeded: {detail}");
        let mut first = self.tripped.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert_with(|| msg.clone());
        JinjaError::new(ErrorKind::InvalidOperation, msg)
    }

    /// The first limit hit, if any.
    pub fn tripped(&self) -> Option<String> {
        self.tripped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Spend `units` of work; also where the clock is read (every 256th time: it costs as much
    /// as visiting a value).
    pub fn charge(&self, units: u64) -> Result<(), JinjaError> {
        let calls = self.calls.fetch_add(1, Ordering::Relaxed);
        let left = self.work_left.load(Ordering::Relaxed);
        if units > left {
            self.work_left.store(0, Ordering::Relaxed);
            return Err(self.exceeded(
                "work",
                format!(
                    "the template copied, formatted or visited more than {} (bytes, and {NODE_COST} a value)",
                    mib(WORK)
                ),
            ));
        }
        self.work_left.store(left - units, Ordering::Relaxed);
        if calls % 256 == 0 && Instant::now() > self.deadline {
            return Err(self.exceeded("time", format!("rendering took over {TIME:?}")));
        }
        Ok(())
    }

    /// Pay for writing at most `bytes` of text.
    pub fn emit(&self, bytes: u64) -> Result<(), JinjaError> {
        let total = self.emitted.load(Ordering::Relaxed).saturating_add(bytes);
        self.emitted.store(total, Ordering::Relaxed);
        if total > OUTPUT_BYTES {
            return Err(self.exceeded(
                "output",
                format!(
                    "the template wrote {total} bytes or more, over {}",
                    mib(OUTPUT_BYTES)
                ),
            ));
        }
        self.charge(bytes)
    }

    /// Check that a string of `bytes` may be built, and pay for building it.
    pub fn string(&self, what: &str, bytes: Option<u64>) -> Result<(), JinjaError> {
        match bytes {
            Some(n) if n <= STRING_BYTES => self.charge(n),
            _ => Err(self.exceeded(
                "size",
                format!(
                    "{what} would be {} bytes, over {} a string",
                    bytes.map_or("2^64 or more".into(), |n| n.to_string()),
                    mib(STRING_BYTES)
                ),
            )),
        }
    }

    /// Check that a list of `items` may be built.
    pub fn items(&self, what: &str, items: Option<u64>) -> Result<(), JinjaError> {
        match items {
            Some(n) if n <= ITEMS => Ok(()),
            _ => Err(self.exceeded(
                "size",
                format!(
                    "{what} would have {} items, over {ITEMS} a list",
                    items.map_or("2^64 or more".into(), |n| n.to_string())
                ),
            )),
        }
    }

    /// Walk `v` (at nesting `depth` already), paying `NODE_COST` a value; fails past `DEPTH`
    /// (which also ends a cycle) or when the budget runs out (which ends a shared structure that
    /// expands exponentially). Strings are not paid for here: callers that copy them do.
    pub fn measure(&self, v: &Value, depth: usize) -> Result<Size, JinjaError> {
        let mut size = Size::default();
        self.walk(v, depth, depth, &mut size)?;
        Ok(size)
    }

    /// The items of a list (its length, or counted by walking it at `NODE_COST` each).
    pub fn count(&self, v: &Value) -> Result<u64, JinjaError> {
        if let Some(n) = v.len() {
            return Ok(n as u64);
        }
        let mut n = 0u64;
        for _ in v.try_iter()? {
            self.charge(NODE_COST)?;
            n += 1;
        }
        Ok(n)
    }

    fn walk(
        &self,
        v: &Value,
        start: usize,
        depth: usize,
        size: &mut Size,
    ) -> Result<(), JinjaError> {
        self.charge(NODE_COST)?;
        size.nodes += 1;
        size.depth = size.depth.max(depth - start);
        match v.kind() {
            ValueKind::String => size.bytes += v.as_str().map_or(0, str::len) as u64,
            ValueKind::Bytes => size.bytes += v.as_bytes().map_or(0, <[u8]>::len) as u64,
            ValueKind::Seq | ValueKind::Iterable | ValueKind::Map => {
                if depth >= DEPTH {
                    return Err(self.exceeded(
                        "depth",
                        format!("a value nested deeper than {DEPTH} (or a cycle)"),
                    ));
                }
                let is_map = v.kind() == ValueKind::Map;
                for item in v.try_iter()? {
                    self.walk(&item, start, depth + 1, size)?;
                    if is_map {
                        self.walk(&v.get_item(&item)?, start, depth + 1, size)?;
                    }
                }
            }
            // An error held as a value (an item of `chain` over a number …): minijinja's
            // ordering panics on two of them, so it goes no further.
            ValueKind::Invalid => {
                return Err(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    format!("the template made an invalid value: {v}"),
                ))
            }
            _ => {}
        }
        Ok(())
    }
}

/// What `Budget::measure` found: values and string bytes, shared parts counted each time.
#[derive(Default, Clone, Copy)]
pub struct Size {
    pub nodes: u64,
    pub bytes: u64,
    /// Levels below the value (0 for a string or number).
    pub depth: usize,
}

impl Size {
    /// An upper bound on the bytes of the value's text (`{{ v }}`, `~`, `|string`): a string
    /// prints as itself; in a list or map a byte may print as an escape of up to 10 (`\u{10ffff}`)
    /// and each value adds at most 48 (a number in short form, quotes, separators); a lone float
    /// prints in full decimal (5e-324 is 326 characters).
    pub fn text_bound(&self, v: &Value) -> u64 {
        let escaped = self.bytes.saturating_mul(10);
        match v.kind() {
            ValueKind::String => self.bytes,
            ValueKind::Seq | ValueKind::Iterable | ValueKind::Map => {
                escaped.saturating_add(self.nodes.saturating_mul(48))
            }
            _ => escaped.saturating_add(400),
        }
    }
}

/// `n` bytes in MiB, for messages.
pub fn mib(n: u64) -> String {
    format!("{} MiB", n >> 20)
}
