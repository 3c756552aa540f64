package llorch

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// modelPath: $LLORCH_MODEL, else SmolLM2-135M through scripts/fetch-model (small enough for
// a CPU test). A failed fetch fails the test.
func modelPath(t *testing.T) string {
	if p := os.Getenv("LLORCH_MODEL"); p != "" {
		return p
	}
	out, err := exec.Command("../../scripts/fetch-model", "smollm2-135m").Output()
	if err != nil {
		t.Fatalf("scripts/fetch-model: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func load(t *testing.T) (*Context, *Model) {
	c, err := NewContext(ContextOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := LoadModel(c, modelPath(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); c.Close() })
	return c, m
}

func prompt(t *testing.T, m *Model, user string) string {
	p, err := m.ApplyChatTemplate([]Message{{"user", user}}, true)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(p, user) {
		t.Fatalf("template output %q lacks the message", p)
	}
	return p
}

func TestVersion(t *testing.T) {
	if Version() == "" {
		t.Fatal("empty version")
	}
}

func TestBadPathAndDevice(t *testing.T) {
	c, err := NewContext(ContextOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = LoadModel(c, "/nonexistent/model.gguf", nil)
	var e *Error
	if !errors.As(err, &e) || e.Status != IO || !strings.Contains(e.Message, "/nonexistent/model.gguf") {
		t.Fatalf("want an IO error naming the path, got %v", err)
	}
	if !errors.Is(err, ErrIO) {
		t.Fatal("errors.Is(err, ErrIO) is false")
	}
	if _, err := NewContext(ContextOptions{Device: "tpu"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad device: %v", err)
	}
}

func TestGenerate(t *testing.T) {
	_, m := load(t)
	if a, err := m.Architecture(); err != nil || a != "llama" {
		t.Fatalf("architecture %q %v", a, err)
	}
	s, err := m.NewSession(SessionOptions{NCtx: 512})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p := DefaultGenerateParams()
	p.MaxTokens = 12
	var sb strings.Builder
	n := 0
	stats, err := s.Generate(context.Background(), prompt(t, m, "Name three colors."), p, func(text string, tok int32) bool {
		sb.WriteString(text)
		n++
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	if sb.Len() == 0 || n == 0 || stats.GeneratedTokens == 0 || stats.GeneratedTokens > 12 {
		t.Fatalf("text %q, %d pieces, stats %+v", sb.String(), n, stats)
	}
	if stats.StopReason != StopLimit && stats.StopReason != StopEOS {
		t.Fatalf("stop reason %d", stats.StopReason)
	}
	// The channel form gives the same greedy text on a fresh conversation.
	if err := s.Reset(); err != nil {
		t.Fatal(err)
	}
	pieces, result := s.GenerateChan(context.Background(), prompt(t, m, "Name three colors."), p)
	var sb2 strings.Builder
	for piece := range pieces {
		sb2.WriteString(piece.Text)
	}
	if err := <-result; err != nil {
		t.Fatal(err)
	}
	if sb2.String() != sb.String() {
		t.Fatalf("channel form %q != callback form %q", sb2.String(), sb.String())
	}
}

func TestCancelFromAnotherGoroutine(t *testing.T) {
	_, m := load(t)
	s, err := m.NewSession(SessionOptions{NCtx: 2048})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p := DefaultGenerateParams()
	p.MaxTokens = 500
	third := make(chan struct{})
	resume := make(chan struct{})
	go func() {
		<-third
		s.Cancel()
		s.Cancel() // twice is once
		close(resume)
	}()
	pieces := 0
	stats, err := s.Generate(context.Background(), prompt(t, m, "Write a long story about a lighthouse."), p, func(string, int32) bool {
		pieces++
		if pieces == 3 {
			close(third)
			<-resume // the other goroutine has cancelled
		}
		return true
	})
	if !errors.Is(err, ErrCancelled) || stats.StopReason != StopCancelled {
		t.Fatalf("want cancelled, got %v %+v", err, stats)
	}
	if pieces != 3 {
		t.Fatalf("%d pieces: cancel must stop within one token", pieces)
	}
	// A context deadline cancels too, and the session stays usable.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := s.Generate(ctx, " Go on.", p, nil); !errors.Is(err, ErrCancelled) {
		t.Fatalf("deadline: %v", err)
	}
	p.MaxTokens = 2
	if _, err := s.Generate(context.Background(), " Go on.", p, nil); err != nil {
		t.Fatalf("after cancel: %v", err)
	}
}

func TestTwoSessionsInParallel(t *testing.T) {
	_, m := load(t)
	pr := prompt(t, m, "What is a GPU?")
	a, err := m.NewSession(SessionOptions{NCtx: 512})
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.NewSession(SessionOptions{NCtx: 512})
	if err != nil {
		t.Fatal(err)
	}
	m.Close() // the sessions keep the model
	defer a.Close()
	defer b.Close()
	p := DefaultGenerateParams()
	p.MaxTokens = 10
	var wg sync.WaitGroup
	out := make([]string, 2)
	errs := make([]error, 2)
	for i, s := range []*Session{a, b} {
		wg.Add(1)
		go func(i int, s *Session) {
			defer wg.Done()
			var sb strings.Builder
			_, errs[i] = s.Generate(context.Background(), pr, p, func(text string, _ int32) bool {
				sb.WriteString(text)
				return true
			})
			out[i] = sb.String()
		}(i, s)
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatal(errs)
	}
	if out[0] == "" || out[0] != out[1] {
		t.Fatalf("greedy outputs differ: %q vs %q", out[0], out[1])
	}
	toks, err := a.Tokenize("Hello world", false, false)
	if err != nil || len(toks) == 0 {
		t.Fatal(toks, err)
	}
	text, err := a.Detokenize(toks)
	if err != nil || string(text) != "Hello world" {
		t.Fatalf("%q %v", text, err)
	}
}

// A JSON Schema constrains the output: it parses and has the required fields with their
// types, the generation ends when the object is complete; a bad schema is an error naming
// the unsupported keyword.
func TestJSONSchema(t *testing.T) {
	_, m := load(t)
	s, err := m.NewSession(SessionOptions{NCtx: 1024, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p := DefaultGenerateParams()
	p.MaxTokens = 300 // the schema bounds the output to fewer bytes than this
	p.Temperature = 0.8
	p.JSONSchema = `{"type":"object","properties":{"city":{"type":"string","maxLength":20},
		"population":{"type":"integer","minimum":0,"maximum":99999999}},
		"required":["city","population"],"additionalProperties":false}`
	var sb strings.Builder
	stats, err := s.Generate(context.Background(), prompt(t, m, "Describe a city as JSON."), p,
		func(text string, tok int32) bool { sb.WriteString(text); return true })
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		City       *string `json:"city"`
		Population *int64  `json:"population"`
	}
	dec := json.NewDecoder(strings.NewReader(sb.String()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil || v.City == nil || v.Population == nil ||
		len([]rune(*v.City)) > 20 || *v.Population < 0 || *v.Population > 99999999 {
		t.Fatalf("output %q does not validate (%v)", sb.String(), err)
	}
	if stats.StopReason != StopEOS {
		t.Fatalf("stop reason %d, want EOS (the object was complete)", stats.StopReason)
	}
	p.JSONSchema = `{"type":"string","format":"date"}`
	_, err = s.Generate(context.Background(), "x", p, nil)
	if err == nil || !strings.Contains(err.Error(), "unsupported keyword 'format'") {
		t.Fatalf("bad schema: %v", err)
	}
}

// KVType reaches llorch_session_params: f32 and f16 make CPU sessions, a value outside the
// enum is refused (an InvalidArgument error naming the field).
func TestKVType(t *testing.T) {
	_, m := load(t)
	for _, kv := range []KVType{KVF32, KVF16} {
		s, err := m.NewSession(SessionOptions{NCtx: 64, KVType: kv})
		if err != nil {
			t.Fatalf("KV type %d: %v", kv, err)
		}
		s.Close()
	}
	_, err := m.NewSession(SessionOptions{NCtx: 64, KVType: KVType(7)})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "kv_type") {
		t.Fatalf("KV type 7: %v", err)
	}
}
