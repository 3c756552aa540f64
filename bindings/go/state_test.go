package llorch

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

const (
	turn1 = "Once upon a time, in a small village by the sea, there lived"
	turn2 = " The next morning, the old fisherman"
)

// turn generates and returns the tokens the generation sampled.
func turn(t *testing.T, s *Session, prompt string, p GenerateParams) []int32 {
	t.Helper()
	st, err := s.Generate(context.Background(), prompt, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	toks, err := s.Tokens()
	if err != nil {
		t.Fatal(err)
	}
	return toks[len(toks)-int(st.GeneratedTokens):]
}

func newSession(t *testing.T, m *Model, seed uint64) *Session {
	t.Helper()
	s, err := m.NewSession(SessionOptions{NCtx: 512, Seed: seed})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func TestLogprobs(t *testing.T) {
	_, m := load(t)
	s := newSession(t, m, 0)
	var lps []TokenLogprob
	_, err := s.GeneratePieces(context.Background(), turn1, GenerateParams{MaxTokens: 12, Logprobs: 3}, func(p Piece) bool {
		lps = append(lps, p.Logprobs...)
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	toks, _ := s.Tokens()
	if len(lps) == 0 || len(lps) > 12 {
		t.Fatalf("%d tokens reported", len(lps))
	}
	for i, lp := range lps {
		if lp.Token != toks[len(toks)-len(lps)+i] {
			t.Fatalf("token %d: reported %d, generated %v", i, lp.Token, toks)
		}
		if len(lp.Top) != 3 || lp.Top[0].Token != lp.Token || lp.Top[0].Logprob != lp.Logprob || lp.Logprob > 0 {
			t.Fatalf("token %d: greedy is the top one: %+v", i, lp)
		}
		if lp.Top[0].Logprob < lp.Top[1].Logprob || lp.Top[1].Logprob < lp.Top[2].Logprob {
			t.Fatalf("token %d: top not sorted: %+v", i, lp.Top)
		}
	}
	// The channel form carries them too; without Logprobs, none.
	for _, n := range []uint32{3, 0} {
		s2 := newSession(t, m, 0)
		pieces, result := s2.GenerateChan(context.Background(), turn1, GenerateParams{MaxTokens: 12, Logprobs: n})
		var got []TokenLogprob
		for p := range pieces {
			got = append(got, p.Logprobs...)
		}
		if err := <-result; err != nil {
			t.Fatal(err)
		}
		if n == 3 && !reflect.DeepEqual(got, lps) || n == 0 && got != nil {
			t.Fatalf("logprobs %d: channel form reported %+v", n, got)
		}
	}
}

func TestSaveRestoreForkRewind(t *testing.T) {
	_, m := load(t)
	p := GenerateParams{MaxTokens: 16, Temperature: 0.9, TopP: 0.95}
	a := newSession(t, m, 4)
	turn(t, a, turn1, p)
	want := turn(t, a, turn2, p)

	b := newSession(t, m, 4)
	turn(t, b, turn1, p)
	state, err := b.Save()
	if err != nil {
		t.Fatal(err)
	}
	fork, err := b.Fork()
	if err != nil {
		t.Fatal(err)
	}
	defer fork.Close()
	c := newSession(t, m, 77)
	// Refused and harmless: truncated, damaged.
	if err := c.Restore(state[:len(state)-3]); !errors.Is(err, ErrInvalid) {
		t.Fatalf("truncated state: %v", err)
	}
	bad := append([]byte(nil), state...)
	bad[len(bad)/2] ^= 4
	if err := c.Restore(bad); !errors.Is(err, ErrInvalid) {
		t.Fatalf("damaged state: %v", err)
	}
	if toks, _ := c.Tokens(); len(toks) != 0 {
		t.Fatalf("a refused restore changed the session: %v", toks)
	}
	if err := c.Restore(state); err != nil {
		t.Fatal(err)
	}
	if got := turn(t, c, turn2, p); !reflect.DeepEqual(got, want) {
		t.Fatalf("restored: %v, uninterrupted: %v", got, want)
	}
	if got := turn(t, fork, turn2, p); !reflect.DeepEqual(got, want) {
		t.Fatalf("fork: %v, uninterrupted: %v", got, want)
	}
	path := filepath.Join(t.TempDir(), "state.bin")
	if err := b.SaveFile(path); err != nil {
		t.Fatal(err)
	}
	d := newSession(t, m, 1)
	if err := d.RestoreFile(path); err != nil {
		t.Fatal(err)
	}
	if got := turn(t, d, turn2, p); !reflect.DeepEqual(got, want) {
		t.Fatalf("restored from a file: %v, uninterrupted: %v", got, want)
	}
	if err := d.RestoreFile(path + ".missing"); !errors.Is(err, ErrIO) {
		t.Fatalf("missing file: %v", err)
	}
	os.Remove(path)

	// Rewind a greedy second turn and generate it again: the same tokens.
	g := GenerateParams{MaxTokens: 12}
	before, _ := b.Tokens()
	first := turn(t, b, turn2, g)
	if err := b.Rewind(uint32(len(before))); err != nil {
		t.Fatal(err)
	}
	if got := turn(t, b, turn2, g); !reflect.DeepEqual(got, first) {
		t.Fatalf("after rewind: %v, first time: %v", got, first)
	}
	if err := b.Rewind(1 << 20); !errors.Is(err, ErrInvalid) {
		t.Fatalf("rewind past the end: %v", err)
	}
}

func TestTokenizerQueries(t *testing.T) {
	_, m := load(t)
	bos, eos, eot, err := m.SpecialTokens()
	if err != nil || eos < 0 || bos < -1 || eot < -1 {
		t.Fatalf("special tokens %d %d %d %v", bos, eos, eot, err)
	}
	text, err := m.TokenText(eos)
	if err != nil || len(text) == 0 {
		t.Fatalf("EOS text %q %v", text, err)
	}
	if sp, err := m.TokenIsSpecial(eos); err != nil || !sp {
		t.Fatalf("EOS %q special: %v %v", text, sp, err)
	}
	ids, err := newSession(t, m, 0).Tokenize("hello", false, false)
	if err != nil || len(ids) != 1 {
		t.Fatalf("tokenize hello: %v %v", ids, err)
	}
	if text, err := m.TokenText(ids[0]); err != nil || string(text) != "hello" {
		t.Fatalf("text of %d: %q %v", ids[0], text, err)
	}
	if sp, err := m.TokenIsSpecial(ids[0]); err != nil || sp {
		t.Fatalf("'hello' special: %v %v", sp, err)
	}
	n, _ := m.VocabSize()
	if _, err := m.TokenText(int32(n)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("token past the vocabulary: %v", err)
	}
}
