package llorch

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"os"
	"strings"
	"testing"
)

// The HF transformers reference of tests/fixtures/embed (scripts/reference/embeddings_hf.py):
// SmolLM2-135M's pooled final hidden states, [input][mean, last, cls][dim].
type embedFixture struct {
	Texts []string
	Dim   int
	Data  []float32
}

// embedFixtures is the fixture folder: LLORCH_EMBED_FIXTURES (for a copy of the module outside
// the repository, as the packaging test runs it), else the repository's.
func embedFixtures() string {
	if d := os.Getenv("LLORCH_EMBED_FIXTURES"); d != "" {
		return d
	}
	return "../../tests/fixtures/embed"
}

func loadEmbedFixture(t *testing.T) embedFixture {
	raw, err := os.ReadFile(embedFixtures() + "/smollm2-135m.json")
	if err != nil {
		t.Fatal(err)
	}
	var idx struct {
		NEmbd  int `json:"n_embd"`
		Inputs []struct {
			Text string `json:"text"`
		} `json:"inputs"`
	}
	if err := json.Unmarshal(raw, &idx); err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(embedFixtures() + "/smollm2-135m.bin")
	if err != nil {
		t.Fatal(err)
	}
	f := embedFixture{Dim: idx.NEmbd, Data: make([]float32, len(bin)/4)}
	for i := range f.Data {
		f.Data[i] = math.Float32frombits(binary.LittleEndian.Uint32(bin[4*i:]))
	}
	for _, in := range idx.Inputs {
		f.Texts = append(f.Texts, in.Text)
	}
	return f
}

func relErr(got, want []float32) float64 {
	var num, den float64
	for i := range want {
		d := float64(got[i]) - float64(want[i])
		num += d * d
		den += float64(want[i]) * float64(want[i])
	}
	return math.Sqrt(num / den)
}

// Tolerance as in tests/session_embed.rs: 2e-3 relative (8-bit activations over 30 layers;
// measured 2.5e-4), while a wrong pooling misses by 30% or more.
func TestEmbedMatchesReference(t *testing.T) {
	if os.Getenv("LLORCH_MODEL") != "" && !strings.Contains(os.Getenv("LLORCH_MODEL"), "smollm2") {
		t.Skip("the reference is SmolLM2-135M's")
	}
	_, m := load(t)
	f := loadEmbedFixture(t)
	dim, pooling, err := m.EmbeddingInfo()
	if err != nil || dim != f.Dim || pooling != PoolingLast {
		t.Fatalf("EmbeddingInfo: %d %d %v", dim, pooling, err)
	}
	for k, p := range []Pooling{PoolingMean, PoolingLast, PoolingCLS} {
		vs, err := m.Embed(f.Texts, EmbedOptions{Pooling: p})
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range vs {
			want := f.Data[(i*3+k)*dim : (i*3+k+1)*dim]
			if e := relErr(v, want); e > 2e-3 {
				t.Errorf("pooling %d input %d: relative error %.2e", p, i, e)
			}
		}
	}
	// Normalized, the model's pooling: unit vectors along the last-token reference.
	vs, err := m.Embed(f.Texts[:2], EmbedOptions{Normalize: true})
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range vs {
		var n, dot, wn float64
		want := f.Data[(i*3+1)*dim : (i*3+2)*dim]
		for j := range v {
			n += float64(v[j]) * float64(v[j])
			dot += float64(v[j]) * float64(want[j])
			wn += float64(want[j]) * float64(want[j])
		}
		if math.Abs(math.Sqrt(n)-1) > 1e-6 || dot/math.Sqrt(wn) < 1-2e-6 {
			t.Errorf("input %d: norm %f, cosine %f", i, math.Sqrt(n), dot/math.Sqrt(wn))
		}
	}
}

func TestEmbedBadInput(t *testing.T) {
	_, m := load(t)
	_, err := m.Embed([]string{"fine", ""}, EmbedOptions{})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "input 1 is empty") {
		t.Fatalf("empty text: %v", err)
	}
	_, err = m.Embed([]string{"fine"}, EmbedOptions{Pooling: 9})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "pooling is 9") {
		t.Fatalf("bad pooling: %v", err)
	}
	vs, err := m.Embed(nil, EmbedOptions{})
	if err != nil || len(vs) != 0 {
		t.Fatalf("no texts: %v %v", vs, err)
	}
}
