//! KV memory from one paged pool per model (CPU), on a real model (SmolLM2-135M): idle
//! sessions hold only the blocks they use; an exhausted budget gives `Error::Busy` at once
//! (fail-when-busy) or a wait that a finishing generation wakes; idle prefix-cache blocks are
//! evicted least recently used first; the prefix cache is exact (a session served from it
//! generates the tokens and log-probabilities, bit for bit, that it generates on a cold
//! model) and skips the shared prompt; fork, rewind, save and restore over shared blocks.

mod common;

use llorch::backend::{Context, ContextOptions};
use llorch::model::Model;
use llorch::session::{GenerateParams, GenerateStats, Session, SessionOptions};
use llorch::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A shared system prompt of about 300 tokens (more than one prefill chunk of 256, so a
/// resumed prompt starts inside a chunk).
const SYSTEM: &str = "System: You are the help desk assistant of the Harbour Town public library. \
Follow these rules in every answer. 1. Greet the reader only once, at the start of the \
conversation. 2. Answer in plain English, in short sentences, without jargon. 3. The library \
opens at nine in the morning and closes at seven in the evening from Monday to Friday; on \
Saturday it closes at one; on Sunday it is closed. 4. A reader may borrow up to twelve books \
at a time for three weeks, and renew them twice unless another reader has reserved them. \
5. Late books cost ten cents a day, at most five dollars a book; children's books cost \
nothing. 6. The reading room on the second floor is quiet: no calls, no food, water only in \
bottles with a lid. 7. Printing costs ten cents a page in black and white and fifty cents in \
colour; the copier is next to the lifts. 8. The maker space in the basement has two 3D \
printers and a sewing machine; book them at the front desk a day ahead. 9. Never ask for a \
reader's address, card number or birthday in the chat. 10. If you do not know an answer, say \
so and give the phone number of the front desk, 555 0142. 11. Keep every answer under one \
hundred words unless the reader asks for more. 12. Recommend at most three books at a time, \
with their authors, and say which shelf they are on when you know it.\n";

const QUESTIONS: [&str; 4] = [
    "User: Hi\nAssistant:",
    "User: When does the library close on Saturday?\nAssistant:",
    "User: Can I print a colour poster of twenty pages, and what will it cost me?\nAssistant:",
    "User: Suggest two novels about the sea for a long train journey.\nAssistant:",
];

fn context(budget: u64) -> Arc<Context> {
    Context::new(ContextOptions {
        memory_budget: budget,
        ..Default::default()
    })
    .unwrap()
}

fn load_in(ctx: &Arc<Context>) -> Arc<Model> {
    Model::load(ctx, &common::model_path(common::SMOLLM2), None).unwrap()
}

/// Bytes SmolLM2's weights take in a context's budget, and its KV block's bytes.
fn weights_and_block() -> (u64, u64) {
    let ctx = context(0);
    let m = load_in(&ctx);
    (ctx.used_bytes(), m.kv_stats().block_bytes)
}

// Set field by field: the options gain fields on other branches (kv_type), and a literal with
// all of today's fields would not build beside them, nor `..Default::default()` pass clippy
// without them.
#[allow(clippy::field_reassign_with_default)]
fn session(m: &Arc<Model>) -> Session {
    let mut o = SessionOptions::default();
    o.n_ctx = 1024;
    Session::new(m.clone(), o).unwrap()
}

fn greedy(n: u32) -> GenerateParams {
    GenerateParams {
        max_tokens: n,
        logprobs: 2,
        ..Default::default()
    }
}

/// What a generation gives: its tokens, the bits of every log-probability it reports (the
/// token's and its alternatives'), and its stats.
struct Run {
    tokens: Vec<u32>,
    bits: Vec<u32>,
    stats: GenerateStats,
}

fn run(s: &mut Session, prompt: &str, p: &GenerateParams) -> Result<Run, Error> {
    let (mut tokens, mut bits) = (Vec::new(), Vec::new());
    let stats = s.generate_pieces(prompt, p, &mut |piece| {
        for lp in &piece.logprobs {
            tokens.push(lp.token);
            bits.push(lp.logprob.to_bits());
            bits.extend(lp.top.iter().flat_map(|&(t, l)| [t, l.to_bits()]));
        }
        true
    })?;
    Ok(Run {
        tokens,
        bits,
        stats,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Served from the prefix cache, one after another and four at once (batched), each question
/// generates what it generates on a freshly loaded model, bit for bit, and skips computing
/// the shared system prompt. Prints the time to first token saved.
#[test]
fn prefix_cache_is_exact_and_skips_the_shared_prompt() {
    let p = greedy(24);
    // References: each prompt on a cold model (its own pool, an empty cache).
    let mut cold = Vec::new();
    for q in QUESTIONS {
        let m = load_in(&context(0));
        let r = run(&mut session(&m), &format!("{SYSTEM}{q}"), &p).unwrap();
        assert_eq!(r.stats.prompt_cached, 0);
        cold.push(r);
    }
    let m = load_in(&context(0));
    let block = m.kv_stats().block_positions;
    let mut warm_ttft = Vec::new();
    for (i, q) in QUESTIONS.iter().enumerate() {
        let r = run(&mut session(&m), &format!("{SYSTEM}{q}"), &p).unwrap();
        let c = &cold[i];
        assert_eq!(
            r.tokens, c.tokens,
            "question {i}: tokens differ from a cold model"
        );
        assert_eq!(r.bits, c.bits, "question {i}: log-probabilities differ");
        let (len, cached) = (
            r.stats.prompt_tokens as usize,
            r.stats.prompt_cached as usize,
        );
        if i == 0 {
            assert_eq!(cached, 0, "the first prompt finds an empty cache");
        } else {
            // The system prompt's whole blocks (one less where the resumed chunk would be
            // small: see session::kv_memory).
            assert!(
                cached % block == 0 && cached >= 256 && cached < len,
                "{cached} of {len}"
            );
            warm_ttft.push(r.stats.prompt_seconds);
        }
    }
    // Four at once, stepped together by the batcher, with a prompt chunk beside decoding
    // rows.
    let runs: Vec<Run> = std::thread::scope(|sc| {
        let hs: Vec<_> = QUESTIONS
            .iter()
            .map(|q| {
                let (m, p) = (m.clone(), p.clone());
                sc.spawn(move || run(&mut session(&m), &format!("{SYSTEM}{q}"), &p).unwrap())
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (r, c)) in runs.iter().zip(&cold).enumerate() {
        assert_eq!(r.tokens, c.tokens, "concurrent question {i}: tokens differ");
        assert_eq!(
            r.bits, c.bits,
            "concurrent question {i}: log-probabilities differ"
        );
        assert!(r.stats.prompt_cached > 0);
    }
    let cold_ttft = median(cold[1..].iter().map(|r| r.stats.prompt_seconds).collect());
    eprintln!(
        "time to first token, {} prompt tokens of which {} cached: cold {:.1} ms, from the \
         cache {:.1} ms (median of {})",
        cold[1].stats.prompt_tokens,
        runs[1].stats.prompt_cached,
        cold_ttft * 1e3,
        median(warm_ttft.clone()) * 1e3,
        warm_ttft.len()
    );
}

/// Eight idle sessions hold the blocks of the positions they use and nothing else (before
/// the pool, each held its whole context); dropping, resetting or rewinding one gives them
/// back. SmolLM2 and Qwen2.5 0.5B.
#[test]
fn idle_sessions_hold_only_the_blocks_they_use() {
    idle_sessions(common::SMOLLM2);
}

#[test]
fn idle_qwen_sessions_hold_only_the_blocks_they_use() {
    idle_sessions(common::QWEN_05B);
}

fn idle_sessions(name: &str) {
    let ctx = context(0);
    let m = Model::load(&ctx, &common::model_path(name), None).unwrap();
    let weights = ctx.used_bytes();
    let st = m.kv_stats();
    let mut sessions: Vec<Session> = (0..8)
        .map(|i| {
            let mut s = Session::new(m.clone(), SessionOptions::default()).unwrap();
            let prompt = format!("Session {i} asks: what is {i} times {}?", i + 3);
            run(&mut s, &prompt, &greedy(16 + i as u32)).unwrap();
            s
        })
        .collect();
    let blocks = |ss: &[Session]| -> u64 {
        ss.iter()
            .map(|s| (s.n_past() as u64).div_ceil(st.block_positions as u64))
            .sum()
    };
    let held = m.kv_stats().held_bytes;
    assert_eq!(held, blocks(&sessions) * st.block_bytes);
    assert_eq!(
        ctx.used_bytes() - weights,
        held,
        "the budget counts the blocks"
    );
    let whole = 8 * sessions[0].n_ctx() as u64 * st.block_bytes / st.block_positions as u64;
    eprintln!(
        "{name}: 8 idle sessions of {} positions, {} tokens in all: {:.1} MB of KV (whole \
         caches: {:.1} MB)",
        sessions[0].n_ctx(),
        sessions.iter().map(|s| s.n_past()).sum::<u32>(),
        held as f64 / 1e6,
        whole as f64 / 1e6
    );
    sessions.truncate(5);
    sessions[0].reset();
    assert_eq!(m.kv_stats().held_bytes, blocks(&sessions) * st.block_bytes);
    sessions[1].rewind(3).unwrap();
    assert_eq!(m.kv_stats().held_bytes, blocks(&sessions) * st.block_bytes);
    drop(sessions);
    assert_eq!(m.kv_stats().held_bytes, 0);
    assert_eq!(ctx.used_bytes(), weights);
}

/// With the budget taken: a fail-when-busy session gets `Error::Busy` at once and changes
/// nothing (its own conversation or its neighbour's); a waiting one also gets it when only
/// idle sessions hold the memory; while a generation is in flight it waits, and is served
/// when that generation's session is dropped.
#[test]
fn an_exhausted_budget_is_busy_or_a_wait_that_ends() {
    let (weights, bb) = weights_and_block();
    let ctx = context(weights + 8 * bb);
    let m = load_in(&ctx);
    let long = "Once upon a time, in a small village by the sea, there lived an old fisherman \
                and his wife, who had a little dog named Pepper and a garden full of beans.";
    let mut a = session(&m);
    a.set_fail_when_busy(true);
    // Prompt and 60 tokens: 6 or 7 of the 8 blocks.
    run(&mut a, long, &greedy(60)).unwrap();
    let a_state = a.save_state().unwrap();
    let mut b = session(&m);
    b.set_fail_when_busy(true);
    let p = greedy(40);
    let t = Instant::now();
    match run(&mut b, "Tell me a story about a cat and a boat.", &p) {
        Err(Error::Busy(msg)) => assert!(msg.contains("not to wait"), "{msg}"),
        other => panic!("expected Busy, got {:?}", other.map(|r| r.tokens)),
    }
    assert!(t.elapsed() < Duration::from_millis(200), "fails at once");
    assert!(b.tokens().is_empty(), "the busy session changed");
    assert_eq!(a.save_state().unwrap(), a_state, "the neighbour changed");
    // Waiting, with nothing in flight: busy after a grace period, not a hang.
    b.set_fail_when_busy(false);
    match run(&mut b, "Tell me a story about a cat and a boat.", &p) {
        Err(Error::Busy(msg)) => assert!(msg.contains("idle sessions"), "{msg}"),
        other => panic!("expected Busy, got {:?}", other.map(|r| r.tokens)),
    }
    // Waiting while a generation is in flight: served once its session is dropped.
    a.reset();
    let reference = {
        let fresh = load_in(&context(0));
        run(
            &mut session(&fresh),
            "Tell me a story about a cat and a boat.",
            &p,
        )
        .unwrap()
    };
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let c_model = m.clone();
    let c = std::thread::spawn(move || {
        let mut c = session(&c_model);
        let p = GenerateParams {
            max_tokens: 60,
            ignore_eos: true,
            ..Default::default()
        };
        let mut first = Some(started_tx);
        c.generate(long, &p, &mut |_, _| {
            if let Some(tx) = first.take() {
                tx.send(()).unwrap();
            }
            true
        })
        .unwrap();
        drop(c);
        Instant::now()
    });
    started_rx.recv().unwrap();
    let r = run(&mut b, "Tell me a story about a cat and a boat.", &p).unwrap();
    let served = Instant::now();
    let c_dropped = c.join().unwrap();
    assert!(
        served > c_dropped,
        "b was served before c's memory came back"
    );
    assert_eq!(r.tokens, reference.tokens);
    assert_eq!(r.bits, reference.bits);
    assert_eq!(m.kv_stats().waiting, 0);
}

/// Blocks of prompts stay cached after their sessions end; when the budget is needed, the
/// least recently used idle ones go first (a chain's later blocks before its first).
#[test]
fn idle_cached_blocks_are_evicted_least_recently_used_first() {
    let (weights, bb) = weights_and_block();
    let ctx = context(weights + 10 * bb);
    let m = load_in(&ctx);
    let block = m.kv_stats().block_positions;
    let tok = m.tokenizer();
    // Three prompts of at least four whole blocks each, different from their first token.
    let prompts: Vec<String> = ["apple", "river", "castle"]
        .iter()
        .map(|w| {
            let mut p = format!("{w}:");
            while tok.encode(&p, true, true).unwrap().len() < 4 * block + 2 {
                p.push_str(&format!(" {w} number {},", p.len()));
            }
            p
        })
        .collect();
    let len = |p: &str| tok.encode(p, true, true).unwrap().len();
    let first = |i: usize| {
        let mut s = session(&m);
        let r = run(&mut s, &prompts[i], &greedy(2)).unwrap();
        r.stats.prompt_cached as usize
    };
    assert_eq!(first(0), 0);
    let full0 = len(&prompts[0]) / block;
    assert_eq!(m.kv_stats().idle_cached_blocks, full0);
    assert_eq!(m.kv_stats().held_bytes, full0 as u64 * bb);
    assert_eq!(first(1), 0);
    let full1 = len(&prompts[1]) / block;
    assert_eq!(m.kv_stats().idle_cached_blocks, full0 + full1);
    // The third needs more than is free: prompt 0's blocks (the oldest) go, its first last.
    assert_eq!(first(2), 0);
    let st = m.kv_stats();
    assert!(st.held_bytes <= 10 * bb);
    assert!(st.idle_cached_blocks < full0 + full1 + len(&prompts[2]) / block);
    // Prompt 1 is whole in the cache; prompt 0 lost its later blocks.
    let cached1 = first(1);
    let chunk = 256; // the CPU's prefill chunk
    assert_eq!(
        cached1,
        llorch::session::usable_prefix(full1 * block, len(&prompts[1]), block, chunk)
    );
    assert!(cached1 >= 2 * block);
    let cached0 = first(0);
    assert!(cached0 < full0 * block, "prompt 0 kept {cached0} positions");
}

/// A fork shares its original's blocks (no new memory) and each copies a block before it
/// writes into it; rewinding into a cached block and generating equals a cold session fed
/// the shorter history; a state saved from shared blocks restores and continues alike.
#[test]
fn fork_rewind_save_restore_over_shared_blocks() {
    let m = load_in(&context(0));
    let block = m.kv_stats().block_positions;
    let prompt = format!("{SYSTEM}User: Where can I print?\nAssistant:");
    let p = greedy(8);
    let mut a = session(&m);
    run(&mut a, &prompt, &p).unwrap();
    let held = m.kv_stats().held_bytes;
    let mut f = a.fork().unwrap();
    assert_eq!(m.kv_stats().held_bytes, held, "a fork shares the blocks");
    let turn = " And on Sunday?";
    let (ra, rf) = (
        run(&mut a, turn, &p).unwrap(),
        run(&mut f, turn, &p).unwrap(),
    );
    assert_eq!(ra.tokens, rf.tokens);
    assert_eq!(ra.bits, rf.bits);
    // Rewind into the middle of a cached block, then a new turn.
    let mut b = session(&m);
    let r = run(&mut b, &prompt, &p).unwrap();
    assert!(r.stats.prompt_cached > 0);
    let keep = 5 * block + 7;
    b.rewind(keep as u32).unwrap();
    let rb = run(&mut b, turn, &p).unwrap();
    let history = b.tokens()[..keep].to_vec();
    let cold = load_in(&context(0));
    let mut c = session(&cold);
    c.eval(&history, llorch::backend::Logits::Last).unwrap();
    let rc = run(&mut c, turn, &p).unwrap();
    assert_eq!(rb.tokens, rc.tokens);
    assert_eq!(rb.bits, rc.bits);
    // Save b (its first blocks still shared with the cache), restore elsewhere, continue.
    let saved = b.save_state().unwrap();
    let mut d = session(&m);
    d.restore_state(&saved).unwrap();
    assert_eq!(d.tokens(), b.tokens());
    let (rb2, rd) = (
        run(&mut b, turn, &p).unwrap(),
        run(&mut d, turn, &p).unwrap(),
    );
    assert_eq!(rb2.tokens, rd.tokens);
    assert_eq!(rb2.bits, rd.bits);
}
