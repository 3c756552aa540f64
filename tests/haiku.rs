//! M0, the haiku test: the current minute as an English word, the golden prompt through the
//! model's chat template, real greedy generation with the default model; the word must be
//! in the haiku. The word comes from the clock (or the loop) at run time, so it cannot be
//! faked.

mod common;

use llorch::backend::Context;
use llorch::backend::ContextOptions;
use llorch::model::Model;
use llorch::session::{GenerateParams, Session, SessionOptions};
use llorch::tokenizer::chat::ChatMessage;
use std::sync::{Arc, OnceLock};

const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [&str; 6] = ["", "", "twenty", "thirty", "forty", "fifty"];

/// 0..=59 in English words: "zero", "nineteen", "twenty", "forty-two".
fn minute_word(m: u32) -> String {
    match m {
        0..=19 => ONES[m as usize].to_string(),
        _ if m % 10 == 0 => TENS[(m / 10) as usize].to_string(),
        _ => format!("{}-{}", TENS[(m / 10) as usize], ONES[(m % 10) as usize]),
    }
}

fn current_minute() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    ((secs / 60) % 60) as u32
}

fn model() -> &'static Arc<Model> {
    static M: OnceLock<Arc<Model>> = OnceLock::new();
    M.get_or_init(|| {
        let ctx = Context::new(ContextOptions::default()).unwrap();
        Model::load(&ctx, &common::model_path(common::QWEN_05B), None).unwrap()
    })
}

/// The reference's user message for `word`.
fn request(word: &str) -> String {
    format!("Write a haiku about GPU computing that includes the word \"{word}\". Output only the haiku.")
}

/// Prompt ids and the streamed haiku for `word`, at most `max_tokens`, on attempt `attempt`
/// of the schedule (see [`haiku_with_schedule`]); attempt 0 is the reference's prompt, greedy.
fn haiku(word: &str, max_tokens: u32, attempt: u64) -> (Vec<u32>, String) {
    let m = model();
    let msg = |role: &str, content: String| ChatMessage {
        role: role.into(),
        content,
    };
    let messages = if attempt == 0 {
        vec![msg("user", request(word))]
    } else {
        // One worked example first; its word, seventy-two, is never a minute.
        vec![
            msg("user", request("seventy-two")),
            msg(
                "assistant",
                "Seventy-two cores hum,\nthreads in parallel take flight,\nsilicon rivers.".into(),
            ),
            msg("user", request(word)),
        ]
    };
    let prompt = m.apply_chat_template(&messages, true, None).unwrap();
    let ids = m.tokenizer().encode(&prompt, true, false).unwrap();
    let options = SessionOptions {
        n_ctx: 0,
        seed: attempt,
        ..Default::default()
    };
    let mut s = Session::new(m.clone(), options).unwrap();
    let mut text = String::new();
    let mut params = GenerateParams {
        max_tokens,
        ..Default::default()
    };
    if attempt >= 2 {
        params.sampling.temperature = 0.8;
        params.sampling.top_p = 0.95;
    }
    s.generate_tokens(&ids, &params, &mut |piece, _| {
        text.push_str(piece);
        true
    })
    .unwrap();
    (ids, text)
}

/// The fixed schedule (the same as examples/c/haiku.c): the reference's prompt, greedy; if
/// the word is missing (the reference model misses 4 of the 60 minutes greedily; the 0.5B
/// writes "Fifty-five" for "forty-five"), the same request after one worked example, greedy;
/// then up to 3 tries of that at temperature 0.8, top-p 0.95, seeds 2..4. Returns the
/// attempt that succeeded and its text, or None.
fn haiku_with_schedule(word: &str) -> Option<(u64, String)> {
    (0..5).find_map(|attempt| {
        let (_, text) = haiku(word, 40, attempt);
        text.to_lowercase()
            .contains(word)
            .then_some((attempt, text))
    })
}

#[test]
fn minute_words() {
    assert_eq!(minute_word(0), "zero");
    assert_eq!(minute_word(19), "nineteen");
    assert_eq!(minute_word(20), "twenty");
    assert_eq!(minute_word(42), "forty-two");
    assert_eq!(minute_word(59), "fifty-nine");
}

#[test]
fn haiku_contains_the_current_minute() {
    let word = minute_word(current_minute());
    let found = haiku_with_schedule(&word);
    eprintln!("minute word {word:?}; haiku (attempt, text): {found:?}");
    assert!(
        found.is_some(),
        "no haiku of the schedule contains {word:?}"
    );
}

/// Every minute, greedy: the word must appear at least as often as in the reference (56 of
/// 60), the prompt ids must equal the reference's where it has them, and the greedy haikus
/// must equal the reference's. With the sampling schedule every minute must succeed.
#[test]
fn haiku_all_minutes() {
    let golden = common::golden_json("qwen25coder05b.json");
    let (mut greedy_hits, mut scheduled_hits, mut same, mut compared) = (0, 0, 0, 0);
    for m in 0..60 {
        let word = minute_word(m);
        let (ids, text) = haiku(&word, 40, 0);
        let greedy_ok = text.to_lowercase().contains(&word);
        greedy_hits += greedy_ok as usize;
        let scheduled = if greedy_ok {
            Some(0)
        } else {
            haiku_with_schedule(&word).map(|(a, _)| a)
        };
        scheduled_hits += scheduled.is_some() as usize;
        if let Some(g) = golden["haiku"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["minute"] == m)
        {
            let want: Vec<u32> = g["prompt_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(ids, want, "prompt ids for minute {m}");
            compared += 1;
            same += (g["text"].as_str().unwrap() == text) as usize;
        }
        eprintln!(
            "{m:2} {word:12} greedy {} schedule {scheduled:?} {text:?}",
            if greedy_ok { "yes" } else { "NO " }
        );
    }
    eprintln!(
        "greedy: the word appears for {greedy_hits}/60 minutes; with the schedule {scheduled_hits}/60; \
         {same}/{compared} greedy haikus equal the reference's"
    );
    assert!(
        greedy_hits >= 56,
        "greedy: the word appears for only {greedy_hits} of 60 minutes"
    );
    assert_eq!(
        scheduled_hits, 60,
        "with the sampling schedule every minute must succeed"
    );
    assert!(
        same + 1 >= compared,
        "only {same} of {compared} greedy haikus equal the reference's"
    );
}
