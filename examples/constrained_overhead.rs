//! The cost of constrained output on the CPU: decode speed with a JSON Schema against plain
//! decoding of the same number of tokens from the same prompt, in alternating rounds (the
//! host's speed drifts by the minute, so the two are measured side by side); then the
//! matcher's own time per token (masking and accepting, no forward pass) over the same
//! tokens, and the one-off cost of the vocabulary trie.
//!
//! cargo run --release --example constrained_overhead -- [MODEL.gguf] [ROUNDS]
//! (default: the qwen2.5-coder-0.5b of ~/.cache/llorch/models, 5 rounds)

use llorch::backend::{Context, ContextOptions};
use llorch::grammar::{Constraint, VocabTrie};
use llorch::model::Model;
use llorch::sampling::SamplingParams;
use llorch::session::{GenerateParams, Session, SessionOptions};
use llorch::tokenizer::chat::ChatMessage;
use std::time::Instant;

const SCHEMA: &str = r#"{"type":"object","properties":{
  "products":{"type":"array","minItems":12,"maxItems":12,"items":{"type":"object","properties":{
    "name":{"type":"string","maxLength":40},
    "price":{"type":"number"},
    "in_stock":{"type":"boolean"},
    "category":{"enum":["tools","food","toys","books"]}},
    "required":["name","price","in_stock","category"],"additionalProperties":false}}},
  "required":["products"],"additionalProperties":false}"#;

fn main() -> llorch::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).cloned().unwrap_or_else(|| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/llorch/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
    });
    let rounds: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(5);
    let ctx = Context::new(ContextOptions::default())?;
    let model = Model::load(&ctx, path.as_ref(), None)?;
    let t = Instant::now();
    let trie = VocabTrie::new(model.tokenizer())?;
    println!(
        "vocabulary trie: {} nodes, built in {:.1} ms (once per model)",
        trie.n_nodes(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let prompt = model.apply_chat_template(
        &[ChatMessage {
            role: "user".into(),
            content: "List 12 products of a hardware shop as JSON.".into(),
        }],
        true,
        None,
    )?;
    let constraint = Constraint::json_schema(SCHEMA)?;
    let params = |c: Option<Constraint>, max_tokens: u32| GenerateParams {
        max_tokens,
        sampling: SamplingParams::default(), // greedy: plain decoding takes the argmax fast path
        constraint: c,
        ..Default::default()
    };
    let mut rates = (Vec::new(), Vec::new());
    let mut tokens = Vec::new();
    for round in 0..rounds {
        // Constrained first; then plain for as many tokens (fewer if it ends first).
        let session = || {
            Session::new(
                model.clone(),
                SessionOptions {
                    n_ctx: 2048,
                    seed: 1,
                    ..Default::default()
                },
            )
        };
        let mut s = session()?;
        let mut ids = Vec::new();
        let c = s.generate(
            &prompt,
            &params(Some(constraint.clone()), 1500),
            &mut |_, id| {
                ids.push(id);
                true
            },
        )?;
        let n = c.generated_tokens;
        let mut s = session()?;
        let p = s.generate(&prompt, &params(None, n), &mut |_, _| true)?;
        // The first token comes from the prefill: decode rate over the rest.
        let rate = |st: &llorch::session::GenerateStats| {
            (st.generated_tokens.saturating_sub(1)) as f64 / st.generate_seconds
        };
        println!(
            "round {round}: {n} tokens, constrained {:.2} tok/s ({:?}), plain {:.2} tok/s ({} tokens)",
            rate(&c),
            c.stop_reason,
            rate(&p),
            p.generated_tokens
        );
        rates.0.push(rate(&c));
        rates.1.push(rate(&p));
        tokens = ids;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (c, p) = (median(&mut rates.0), median(&mut rates.1));
    println!(
        "median decode: constrained {c:.2} tok/s, plain {p:.2} tok/s: overhead {:+.1}%",
        (p / c - 1.0) * 100.0
    );

    // The matcher alone over the same tokens: mask a logits row, accept the token.
    let trie = model.vocab_trie()?;
    let mut logits = vec![0.0f32; model.vocab_size()];
    let t = Instant::now();
    let mut m = constraint.matcher(trie);
    let mut worst = 0.0f64;
    for &id in &tokens {
        let t = Instant::now();
        m.apply(&mut logits)?;
        m.accept(id, &model.tokenizer().token_bytes(id)?)?;
        worst = worst.max(t.elapsed().as_secs_f64());
    }
    let per = t.elapsed().as_secs_f64() / tokens.len().max(1) as f64;
    println!(
        "matcher alone: {:.3} ms per token over {} tokens ({:.1}% of a {p:.2} tok/s decode \
         step), the slowest token {:.2} ms (a state seen for the first time)",
        per * 1e3,
        tokens.len(),
        per * p * 100.0,
        worst * 1e3
    );
    Ok(())
}
