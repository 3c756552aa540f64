//! Stop strings: text is held back while it could still become a stop string, so a stop
//! string is never emitted, not even partly.

pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops,
            held: String::new(),
        }
    }

    /// Add generated text. Returns the text that is safe to emit, and whether a stop string
    /// matched (then the returned text is everything before it).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return (std::mem::take(&mut self.held), false);
        }
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        // Hold back the longest tail that is a prefix of some stop string.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.held[i..])))
            .unwrap_or(self.held.len());
        let out = self.held[..keep].to_string();
        self.held.drain(..keep);
        (out, false)
    }

    /// The end of generation: everything held back, plus `tail`.
    pub fn finish(&mut self, tail: &str) -> String {
        self.held.push_str(tail);
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::StopMatcher;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (t, hit) = m.push(p);
            out += &t;
            if hit {
                return (out, true);
            }
        }
        out += &m.finish("");
        (out, false)
    }

    #[test]
    fn stop_string_split_across_pieces_is_never_emitted() {
        assert_eq!(run(&["\n\n"], &["a", "b\n", "\nc"]), ("ab".into(), true));
        assert_eq!(run(&["END"], &["xE", "N", "D", "y"]), ("x".into(), true));
    }

    #[test]
    fn a_false_start_is_released() {
        assert_eq!(run(&["END"], &["xE", "N", "x"]), ("xENx".into(), false));
        assert_eq!(run(&["ab"], &["a", "a", "c"]), ("aac".into(), false));
    }

    #[test]
    fn earliest_stop_wins_and_unicode_is_respected() {
        assert_eq!(run(&["zz", "é"], &["aé", "zz"]), ("a".into(), true));
        assert_eq!(run(&[], &["héllo"]), ("héllo".into(), false));
    }
}
