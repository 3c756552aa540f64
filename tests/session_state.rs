//! A session's KV state: save -> restore (another session) -> continue equals never having
//! stopped, token for token, greedy and seeded; rewind then generate equals a fresh session
//! fed the shorter history; fork; bad states (another model, truncated, damaged, another
//! version, too long for the context) are clear errors that change nothing.
//! Real models: SmolLM2-135M, and Gemma 3 270M as "another model".

mod common;

use llorch::backend::{Context, ContextOptions, Logits};
use llorch::model::Model;
use llorch::sampling::SamplingParams;
use llorch::session::{GenerateParams, Session, SessionOptions};
use llorch::Error;
use std::sync::Arc;

fn load(name: &str) -> Arc<Model> {
    let ctx = Context::new(ContextOptions::default()).unwrap();
    Model::load(&ctx, &common::model_path(name), None).unwrap()
}

const TURN1: &str = "Once upon a time, in a small village by the sea, there lived";
const TURN2: &str = " The next morning, the old fisherman";

fn greedy(n: u32) -> GenerateParams {
    GenerateParams {
        max_tokens: n,
        ..Default::default()
    }
}

fn seeded(n: u32) -> GenerateParams {
    GenerateParams {
        max_tokens: n,
        sampling: SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            repeat_penalty: 1.1,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn session(m: &Arc<Model>, n_ctx: u32, seed: u64) -> Session {
    Session::new(
        m.clone(),
        SessionOptions {
            n_ctx,
            seed,
            ..Default::default()
        },
    )
    .unwrap()
}

/// The tokens one generation adds to the conversation (those it samples).
fn turn(s: &mut Session, prompt: &str, p: &GenerateParams) -> Vec<u32> {
    let add_bos = s.tokens().is_empty();
    let before = s.tokens().len()
        + s.model()
            .tokenizer()
            .encode(prompt, true, add_bos)
            .unwrap()
            .len();
    let st = s.generate(prompt, p, &mut |_, _| true).unwrap();
    let all = s.tokens();
    assert_eq!(all.len(), before + st.generated_tokens as usize);
    all[before..].to_vec()
}

#[test]
fn save_restore_continue_equals_an_uninterrupted_run() {
    let m = load(common::SMOLLM2);
    for (name, p) in [("greedy", greedy(16)), ("seeded", seeded(16))] {
        // Never stopped: two turns in one session.
        let mut a = session(&m, 512, 7);
        let a1 = turn(&mut a, TURN1, &p);
        let a2 = turn(&mut a, TURN2, &p);
        // Saved after the first turn, restored into a session of another context length and
        // seed, then continued.
        let mut b = session(&m, 512, 7);
        assert_eq!(turn(&mut b, TURN1, &p), a1, "{name}: same first turn");
        let bytes = b.save_state().unwrap();
        let mut c = session(&m, 256, 12345);
        c.restore_state(&bytes).unwrap();
        assert_eq!(c.tokens(), b.tokens(), "{name}");
        assert_eq!(turn(&mut c, TURN2, &p), a2, "{name}: restored run");
        // The same through a file.
        let path = std::env::temp_dir().join(format!("llorch-state-{}-{name}", std::process::id()));
        b.save_state_file(&path).unwrap();
        let mut d = session(&m, 0, 1);
        d.restore_state_file(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(turn(&mut d, TURN2, &p), a2, "{name}: restored from a file");
        assert!(a2.len() > 4, "{name}: {a2:?}");
    }
}

#[test]
fn only_the_rows_in_use_are_saved() {
    let m = load(common::SMOLLM2);
    let dims = m.dims();
    let mut s = session(&m, 2048, 0);
    let empty = s.save_state().unwrap();
    assert_eq!(empty.len(), 64 + 8);
    turn(&mut s, TURN1, &greedy(5));
    // The pending token (sampled, not fed) is in the header, not in the rows.
    let n = s.n_past() as usize;
    let bytes = s.save_state().unwrap();
    assert_eq!(
        bytes.len(),
        64 + 4 * n + 2 * dims.n_layer * n * dims.kv_dim() * 4 + 8
    );
}

#[test]
fn rewind_then_generate_equals_a_fresh_session_fed_the_shorter_history() {
    let m = load(common::SMOLLM2);
    for (name, p) in [("greedy", greedy(12)), ("seeded", seeded(12))] {
        let mut s = session(&m, 512, 3);
        let prompt = m.tokenizer().encode(TURN1, true, true).unwrap();
        let first = turn(&mut s, TURN1, &greedy(10));
        turn(&mut s, TURN2, &p);
        // Back to the prompt and 4 generated tokens.
        let keep = prompt.len() + 4;
        s.rewind(keep as u32).unwrap();
        assert_eq!(s.tokens(), [&prompt[..], &first[..4]].concat());
        let rewound = turn(&mut s, TURN2, &p);
        // A fresh session fed the same history in the same steps (the prompt, then each
        // token alone, as generation fed them), at the same generation count.
        let mut f = session(&m, 512, 3);
        f.eval(&prompt, Logits::Last).unwrap();
        for &t in &first[..4] {
            f.eval(&[t], Logits::Last).unwrap();
        }
        // The rewound session has begun two generations; the fresh one none (its next
        // draws follow the count), so bring it level: a generation cancelled at once.
        for _ in 0..2 {
            f.cancel_flag()
                .store(true, std::sync::atomic::Ordering::SeqCst);
            f.generate("", &p, &mut |_, _| true).unwrap();
        }
        assert_eq!(turn(&mut f, TURN2, &p), rewound, "{name}");
    }
    // Past the end: an error, nothing changed.
    let mut s = session(&m, 512, 0);
    turn(&mut s, TURN1, &greedy(3));
    let before = s.tokens();
    let e = s.rewind(before.len() as u32 + 1).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument(ref msg) if msg.contains("rewind")),
        "{e}"
    );
    assert_eq!(s.tokens(), before);
    // Rewinding to everything keeps the pending token.
    s.rewind(before.len() as u32).unwrap();
    assert_eq!(s.tokens(), before);
}

#[test]
fn a_fork_continues_as_the_original_would() {
    let m = load(common::SMOLLM2);
    for (name, p) in [("greedy", greedy(12)), ("seeded", seeded(12))] {
        let mut a = session(&m, 512, 9);
        turn(&mut a, TURN1, &p);
        let mut f = a.fork().unwrap();
        assert_eq!(f.tokens(), a.tokens());
        let fa = turn(&mut f, TURN2, &p);
        let aa = turn(&mut a, TURN2, &p);
        assert_eq!(fa, aa, "{name}");
    }
}

#[test]
fn bad_states_are_clear_errors_that_change_nothing() {
    let m = load(common::SMOLLM2);
    let mut a = session(&m, 512, 5);
    turn(&mut a, TURN1, &greedy(6));
    let good = a.save_state().unwrap();

    let mut s = session(&m, 512, 5);
    turn(&mut s, "Hello", &greedy(3));
    let before = s.tokens();
    let reference = {
        let mut r = session(&m, 512, 5);
        turn(&mut r, "Hello", &greedy(3));
        turn(&mut r, TURN2, &greedy(8))
    };
    let expect_err = |s: &mut Session, bytes: &[u8], what: &str| {
        let e = s.restore_state(bytes).unwrap_err();
        assert!(e.to_string().contains(what), "want {what:?}, got: {e}");
        assert_eq!(s.tokens(), before, "after {what}");
    };
    // Every truncation.
    for cut in [0, 5, 8, 12, 40, 64, 71, 72, good.len() / 2, good.len() - 1] {
        let want = if cut < 12 {
            "not a llorch session state"
        } else {
            "truncated"
        };
        expect_err(&mut s, &good[..cut], want);
    }
    // A flipped bit in the KV rows, in a token, in the seed.
    for at in [good.len() - 100, 64 + 4, 33] {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        expect_err(&mut s, &bad, "damaged");
    }
    let mut bad = good.clone();
    bad[8] = 3;
    expect_err(&mut s, &bad, "format version 3");
    let mut bad = good.clone();
    bad[12] = 2;
    expect_err(&mut s, &bad, "KV value type 2");
    let mut longer = good.clone();
    longer.push(0);
    expect_err(&mut s, &longer, "trailing bytes");
    // Too long for a small context.
    let mut small = session(&m, 8, 5);
    let e = small.restore_state(&good).unwrap_err();
    assert!(matches!(e, Error::ContextFull(_)), "{e}");
    assert!(small.tokens().is_empty());
    // The session still continues as if nothing had been tried.
    assert_eq!(turn(&mut s, TURN2, &greedy(8)), reference);

    // Another model: named as such, on either side.
    let g = load(common::GEMMA3);
    let mut gs = session(&g, 512, 5);
    turn(&mut gs, "Hello", &greedy(2));
    let g_before = gs.tokens();
    let e = gs.restore_state(&good).unwrap_err();
    assert!(e.to_string().contains("another model"), "{e}");
    assert_eq!(gs.tokens(), g_before);
    let e = s.restore_state(&gs.save_state().unwrap()).unwrap_err();
    assert!(e.to_string().contains("another model"), "{e}");
}
