// Package llorch binds the llorch C library (an LLM inference engine) for Go.
//
// The library is found through pkg-config (`llorch.pc`): install it with
// `make install PREFIX=...` from the llorch repository and, for a prefix outside the system's
// paths, set PKG_CONFIG_PATH=PREFIX/lib/pkgconfig and LD_LIBRARY_PATH=PREFIX/lib. Inside the
// repository, `make` writes an uninstalled llorch.pc to target/release/pkgconfig instead.
//
// Objects have Close methods; a finalizer is only a backstop. A Model is reference counted by
// its Sessions, so it may be closed first.
package llorch

/*
#cgo pkg-config: llorch
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"context"
	"fmt"
	"runtime"
	"runtime/cgo"
	"strings"
	"sync"
	"unsafe"
)

// Status is a llorch_status code.
type Status int32

const (
	OK              Status = C.LLORCH_OK
	InvalidArgument Status = C.LLORCH_ERR_INVALID_ARGUMENT
	BadModel        Status = C.LLORCH_ERR_BAD_MODEL
	Unsupported     Status = C.LLORCH_ERR_UNSUPPORTED
	OutOfMemory     Status = C.LLORCH_ERR_OUT_OF_MEMORY
	Cancelled       Status = C.LLORCH_ERR_CANCELLED
	ContextFull     Status = C.LLORCH_ERR_CONTEXT_FULL
	NoDevice        Status = C.LLORCH_ERR_NO_DEVICE
	IO              Status = C.LLORCH_ERR_IO
	Internal        Status = C.LLORCH_ERR_INTERNAL
	Busy            Status = C.LLORCH_ERR_BUSY
)

func (s Status) String() string { return C.GoString(C.llorch_status_message(C.int32_t(s))) }

// Error is a failed call: its status and the library's message.
type Error struct {
	Status  Status
	Message string
}

func (e *Error) Error() string { return "llorch: " + e.Message }

// Is makes errors.Is(err, ErrCancelled) (and the other sentinels) match by status.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Message == "" && t.Status == e.Status
}

// Sentinels for errors.Is, one for every status but OK.
var (
	ErrInvalid     = &Error{Status: InvalidArgument}
	ErrBadModel    = &Error{Status: BadModel}
	ErrUnsupported = &Error{Status: Unsupported}
	ErrOutOfMemory = &Error{Status: OutOfMemory}
	ErrCancelled   = &Error{Status: Cancelled}
	ErrContextFull = &Error{Status: ContextFull}
	ErrNoDevice    = &Error{Status: NoDevice}
	ErrIO          = &Error{Status: IO}
	ErrInternal    = &Error{Status: Internal}
	ErrBusy        = &Error{Status: Busy}
)

// check turns a status and its error object into a Go error, freeing the object.
func check(st C.llorch_status, err *C.llorch_error) error {
	if st == C.LLORCH_OK {
		return nil
	}
	e := &Error{Status: Status(st), Message: C.GoString(C.llorch_error_message(err))}
	C.llorch_error_free(err)
	return e
}

func init() {
	if C.llorch_abi_version() != C.LLORCH_ABI_VERSION {
		panic(fmt.Sprintf("llorch: library ABI %d, binding built for %d", C.llorch_abi_version(), C.LLORCH_ABI_VERSION))
	}
}

// Version of the loaded library.
func Version() string { return C.GoString(C.llorch_version()) }

// LogLevel is the severity of a log message; higher is more severe.
type LogLevel int32

const (
	LogDebug LogLevel = C.LLORCH_LOG_DEBUG
	LogInfo  LogLevel = C.LLORCH_LOG_INFO
	LogWarn  LogLevel = C.LLORCH_LOG_WARN
	LogError LogLevel = C.LLORCH_LOG_ERROR
)

type logFunc func(level LogLevel, message string)

var (
	logMu     sync.Mutex // serializes SetLogCallback
	logHandle cgo.Handle // the callback the library holds now; 0 for none
)

//export llorchGoOnLog
func llorchGoOnLog(h C.uintptr_t, level C.int32_t, message *C.char) {
	cgo.Handle(h).Value().(logFunc)(LogLevel(level), C.GoString(message))
}

// SetLogCallback sends the library's log messages of minLevel and above to f, for the whole
// process; nil turns logging off (the default). f runs on whichever thread logs (a goroutine
// inside a llorch call or an engine worker thread), so it must be safe for concurrent use,
// and it must not call SetLogCallback.
func SetLogCallback(f func(level LogLevel, message string), minLevel LogLevel) {
	logMu.Lock()
	defer logMu.Unlock()
	var h cgo.Handle
	if f != nil {
		h = cgo.NewHandle(logFunc(f))
	}
	C.llorch_go_set_log(C.uintptr_t(h), C.int32_t(minLevel))
	// Once llorch_set_log_callback has returned, the previous callback is no longer called.
	if logHandle != 0 {
		logHandle.Delete()
	}
	logHandle = h
}

// Context is a device with its threads and memory budget.
type Context struct{ p *C.llorch_context }

// ContextOptions: Device is "cpu" (default) or "cuda:N"; Threads 0 = all cores;
// MemoryBudget in bytes, 0 = no limit.
type ContextOptions struct {
	Device       string
	Threads      int
	MemoryBudget uint64
}

func NewContext(o ContextOptions) (*Context, error) {
	var p C.llorch_context_params
	C.llorch_context_params_init(&p)
	switch {
	case o.Device == "" || o.Device == "cpu":
	case strings.HasPrefix(o.Device, "cuda:"):
		var n uint32
		if _, err := fmt.Sscanf(o.Device, "cuda:%d", &n); err != nil {
			return nil, &Error{InvalidArgument, "bad device " + o.Device}
		}
		p.device_type = C.LLORCH_DEVICE_CUDA
		p.device_index = C.uint32_t(n)
	default:
		return nil, &Error{InvalidArgument, "device must be cpu or cuda:N, not " + o.Device}
	}
	p.threads = C.uint32_t(o.Threads)
	p.memory_budget = C.uint64_t(o.MemoryBudget)
	c := &Context{}
	var e *C.llorch_error
	if err := check(C.llorch_context_new(&p, &c.p, &e), e); err != nil {
		return nil, err
	}
	runtime.SetFinalizer(c, (*Context).Close)
	return c, nil
}

// Close frees the context; models loaded in it keep working. Safe to call twice.
func (c *Context) Close() {
	C.llorch_context_free(c.p)
	c.p = nil
	runtime.SetFinalizer(c, nil)
}

// Model is a loaded model, shared by its sessions. Safe for concurrent use.
type Model struct{ p *C.llorch_model }

//export llorchGoOnProgress
func llorchGoOnProgress(h C.uintptr_t, fraction C.float) C.bool {
	f := cgo.Handle(h).Value().(func(float32) bool)
	return C.bool(f(float32(fraction)))
}

// LoadModel loads a GGUF file. progress may be nil; returning false cancels the load.
func LoadModel(c *Context, path string, progress func(fraction float32) bool) (*Model, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var h cgo.Handle
	if progress != nil {
		h = cgo.NewHandle(progress)
		defer h.Delete()
	}
	m := &Model{}
	var e *C.llorch_error
	err := check(C.llorch_go_load(c.p, cpath, C.uintptr_t(h), &m.p, &e), e)
	runtime.KeepAlive(c)
	if err != nil {
		return nil, err
	}
	runtime.SetFinalizer(m, (*Model).Close)
	return m, nil
}

// Close releases this handle; sessions created from the model keep working.
func (m *Model) Close() {
	C.llorch_model_free(m.p)
	m.p = nil
	runtime.SetFinalizer(m, nil)
}

func (m *Model) Architecture() (string, error) {
	var s *C.char
	var e *C.llorch_error
	if err := check(C.llorch_model_architecture(m.p, &s, &e), e); err != nil {
		return "", err
	}
	defer runtime.KeepAlive(m)
	return C.GoString(s), nil
}

func (m *Model) ContextLength() (uint32, error) {
	var n C.uint32_t
	var e *C.llorch_error
	err := check(C.llorch_model_context_length(m.p, &n, &e), e)
	return uint32(n), err
}

func (m *Model) VocabSize() (uint32, error) {
	var n C.uint32_t
	var e *C.llorch_error
	err := check(C.llorch_model_vocab_size(m.p, &n, &e), e)
	return uint32(n), err
}

// ChatTemplate returns the model's Jinja template ("" if it has none).
func (m *Model) ChatTemplate() (string, error) {
	var s *C.char
	var e *C.llorch_error
	if err := check(C.llorch_model_chat_template(m.p, &s, &e), e); err != nil {
		return "", err
	}
	defer runtime.KeepAlive(m)
	return C.GoString(s), nil
}

// Message is one chat message.
type Message struct{ Role, Content string }

// ApplyChatTemplate renders messages with the model's template.
func (m *Model) ApplyChatTemplate(msgs []Message, addGenerationPrompt bool) (string, error) {
	cmsgs := (*[1 << 20]C.llorch_chat_message)(C.malloc(C.size_t(len(msgs)+1) * C.size_t(unsafe.Sizeof(C.llorch_chat_message{}))))[: len(msgs)+1 : len(msgs)+1]
	defer C.free(unsafe.Pointer(&cmsgs[0]))
	for i, msg := range msgs {
		cmsgs[i].role = C.CString(msg.Role)
		cmsgs[i].content = C.CString(msg.Content)
		defer C.free(unsafe.Pointer(cmsgs[i].role))
		defer C.free(unsafe.Pointer(cmsgs[i].content))
	}
	var out *C.char
	var e *C.llorch_error
	if err := check(C.llorch_model_apply_chat_template(m.p, &cmsgs[0], C.size_t(len(msgs)), C.bool(addGenerationPrompt), nil, &out, &e), e); err != nil {
		return "", err
	}
	defer C.llorch_string_free(out)
	return C.GoString(out), nil
}

// Session is one conversation. Use it from one goroutine at a time, except Cancel.
type Session struct {
	p       *C.llorch_session
	mu      sync.Mutex // guards running against the context watcher
	running bool
}

// KVType is the element type of a session's KV cache (llorch_kv_type).
type KVType int32

const (
	KVAuto KVType = C.LLORCH_KV_AUTO // f32 on the CPU, f16 on a GPU
	KVF16  KVType = C.LLORCH_KV_F16  // f16: half the memory of f32 (CPU or GPU)
	KVF32  KVType = C.LLORCH_KV_F32  // f32: exact, twice the GPU memory of f16
)

// SessionOptions: NCtx 0 = the model's context length; Seed of the sampler; KVType of the
// KV cache (KVAuto by default).
type SessionOptions struct {
	NCtx   uint32
	Seed   uint64
	KVType KVType
	// FailWhenBusy: when the model's KV memory (the context's budget) is held by other
	// sessions, a generation fails at once with ErrBusy instead of waiting in line.
	FailWhenBusy bool
}

func (m *Model) NewSession(o SessionOptions) (*Session, error) {
	var p C.llorch_session_params
	C.llorch_session_params_init(&p)
	p.n_ctx = C.uint32_t(o.NCtx)
	p.seed = C.uint64_t(o.Seed)
	p.kv_type = C.int32_t(o.KVType)
	p.fail_when_busy = C.bool(o.FailWhenBusy)
	s := &Session{}
	var e *C.llorch_error
	err := check(C.llorch_session_new(m.p, &p, &s.p, &e), e)
	runtime.KeepAlive(m)
	if err != nil {
		return nil, err
	}
	runtime.SetFinalizer(s, (*Session).Close)
	return s, nil
}

// Close frees the session. Not while a Generate is running on it.
func (s *Session) Close() {
	C.llorch_session_free(s.p)
	s.p = nil
	runtime.SetFinalizer(s, nil)
}

// Cancel stops the running generation within one token (also during prompt processing);
// Generate then returns an error matching ErrCancelled. With none running, the next Generate
// is cancelled at once. Safe from any goroutine.
func (s *Session) Cancel() {
	C.llorch_session_cancel(s.p)
}

// Reset forgets the conversation.
func (s *Session) Reset() error {
	var e *C.llorch_error
	return check(C.llorch_session_reset(s.p, &e), e)
}

// GenerateParams: the sampling settings. A zero field means the library's default (given
// in brackets), so GenerateParams{MaxTokens: 64} is greedy decoding of up to 64 tokens.
type GenerateParams struct {
	MaxTokens   uint32  // most tokens to generate [256]
	Temperature float32 // 0 = greedy [0]
	TopK        uint32  // keep the k most likely tokens; 0 = off [0]
	TopP        float32 // nucleus sampling in (0, 1] [1 = off]
	MinP        float32 // drop tokens below MinP times the best probability [0 = off]
	Stop        []string

	RepeatPenalty    float32 // > 0 [1 = off]
	PresencePenalty  float32 // subtracted once from the logit of any token seen [0]
	FrequencyPenalty float32 // subtracted per occurrence from the logit of a token seen [0]
	PenaltyLastN     uint32  // how many recent tokens the penalties look at [64]
	// LogitBias is added to the logits of its tokens before sampling (finite values; -100
	// in effect bans a token).
	LogitBias map[int32]float32
	// LiteralSpecial keeps special tokens written in the prompt (<|im_start|> ...) as plain
	// text [false: they become single tokens, as chat templates need].
	LiteralSpecial bool
	// Logprobs > 0: each generated token's log-probability and this many most likely
	// alternatives come in Piece.Logprobs (GeneratePieces, GenerateChan), taken from the raw
	// logits (before logit bias, penalties, temperature, top-k/p) [0 = off].
	Logprobs uint32
	// JSONSchema constrains the output to JSON valid against this schema (JSON text); the
	// generation ends when the value is complete [empty: no constraint]. Set at most one of
	// JSONSchema and Grammar; an unsupported keyword is an error naming it.
	JSONSchema string
	// Grammar constrains the output to a GBNF-like grammar (start rule root) [empty: none].
	Grammar string
}

// DefaultGenerateParams: the library's defaults written out (greedy, 256 tokens).
func DefaultGenerateParams() GenerateParams {
	var p C.llorch_generate_params
	C.llorch_generate_params_init(&p)
	return GenerateParams{MaxTokens: uint32(p.max_tokens), Temperature: float32(p.temperature),
		TopK: uint32(p.top_k), TopP: float32(p.top_p), MinP: float32(p.min_p),
		RepeatPenalty: float32(p.repeat_penalty), PresencePenalty: float32(p.presence_penalty),
		FrequencyPenalty: float32(p.frequency_penalty), PenaltyLastN: uint32(p.penalty_last_n),
		LiteralSpecial: !bool(p.parse_special)}
}

// toC fills cp (initialized with the defaults) from p; a zero field keeps the default.
// Memory for the stop strings and logit biases is C memory, freed by the returned func.
func (p GenerateParams) toC(cp *C.llorch_generate_params) (free func()) {
	setU32 := func(dst *C.uint32_t, v uint32) {
		if v != 0 {
			*dst = C.uint32_t(v)
		}
	}
	setF32 := func(dst *C.float, v float32) {
		if v != 0 {
			*dst = C.float(v)
		}
	}
	setU32(&cp.max_tokens, p.MaxTokens)
	setF32(&cp.temperature, p.Temperature)
	setU32(&cp.top_k, p.TopK)
	setF32(&cp.top_p, p.TopP)
	setF32(&cp.min_p, p.MinP)
	setF32(&cp.repeat_penalty, p.RepeatPenalty)
	setF32(&cp.presence_penalty, p.PresencePenalty)
	setF32(&cp.frequency_penalty, p.FrequencyPenalty)
	setU32(&cp.penalty_last_n, p.PenaltyLastN)
	cp.parse_special = C.bool(!p.LiteralSpecial)
	cp.logprobs = C.uint32_t(p.Logprobs)
	var frees []unsafe.Pointer
	if len(p.Stop) > 0 {
		stops := unsafe.Slice((**C.char)(C.malloc(C.size_t(len(p.Stop))*C.size_t(unsafe.Sizeof((*C.char)(nil))))), len(p.Stop))
		frees = append(frees, unsafe.Pointer(&stops[0]))
		for i, st := range p.Stop {
			stops[i] = C.CString(st)
			frees = append(frees, unsafe.Pointer(stops[i]))
		}
		cp.stop = &stops[0]
		cp.n_stop = C.size_t(len(p.Stop))
	}
	if len(p.LogitBias) > 0 {
		biases := unsafe.Slice((*C.llorch_logit_bias)(C.malloc(C.size_t(len(p.LogitBias))*C.size_t(unsafe.Sizeof(C.llorch_logit_bias{})))), len(p.LogitBias))
		frees = append(frees, unsafe.Pointer(&biases[0]))
		i := 0
		for tok, bias := range p.LogitBias {
			biases[i] = C.llorch_logit_bias{token: C.int32_t(tok), bias: C.float(bias)}
			i++
		}
		cp.logit_bias = &biases[0]
		cp.n_logit_bias = C.size_t(len(p.LogitBias))
	}
	if p.JSONSchema != "" {
		cp.json_schema = C.CString(p.JSONSchema)
		frees = append(frees, unsafe.Pointer(cp.json_schema))
	}
	if p.Grammar != "" {
		cp.grammar = C.CString(p.Grammar)
		frees = append(frees, unsafe.Pointer(cp.grammar))
	}
	return func() {
		for _, ptr := range frees {
			C.free(ptr)
		}
	}
}

// StopReason says why a generation ended.
type StopReason int32

const (
	StopEOS       StopReason = C.LLORCH_STOP_EOS
	StopLimit     StopReason = C.LLORCH_STOP_LIMIT
	StopString    StopReason = C.LLORCH_STOP_STRING
	StopCancelled StopReason = C.LLORCH_STOP_CANCELLED
)

// Stats of one generation.
type Stats struct {
	PromptTokens, GeneratedTokens  uint32
	PromptSeconds, GenerateSeconds float64
	StopReason                     StopReason
}

type tokenFunc func(text string, token int32) bool

//export llorchGoOnToken
func llorchGoOnToken(h C.uintptr_t, text *C.char, n C.size_t, token C.int32_t) C.bool {
	f := cgo.Handle(h).Value().(tokenFunc)
	return C.bool(f(C.GoStringN(text, C.int(n)), int32(token)))
}

// Generate appends prompt to the conversation and generates, calling onToken (may be nil)
// with each piece of whole UTF-8 text; returning false stops (error ErrCancelled). ctx
// cancels it too. Stats are returned also when cancelled.
func (s *Session) Generate(ctx context.Context, prompt string, p GenerateParams, onToken func(text string, token int32) bool) (Stats, error) {
	var h cgo.Handle
	if onToken != nil {
		h = cgo.NewHandle(tokenFunc(onToken))
		defer h.Delete()
	}
	return s.generate(ctx, prompt, p, func(cprompt *C.char, cp *C.llorch_generate_params, st *C.llorch_generate_stats, e **C.llorch_error) C.llorch_status {
		return C.llorch_go_generate(s.p, cprompt, cp, C.uintptr_t(h), st, e)
	})
}

// generate runs one push-form call, cancelled when ctx is.
func (s *Session) generate(ctx context.Context, prompt string, p GenerateParams, call func(*C.char, *C.llorch_generate_params, *C.llorch_generate_stats, **C.llorch_error) C.llorch_status) (Stats, error) {
	if err := ctx.Err(); err != nil {
		return Stats{StopReason: StopCancelled}, &Error{Cancelled, "cancelled: " + err.Error()}
	}
	var cp C.llorch_generate_params
	C.llorch_generate_params_init(&cp)
	defer p.toC(&cp)()
	cprompt := C.CString(prompt)
	defer C.free(unsafe.Pointer(cprompt))
	// The watcher cancels only while this call runs, so a late ctx does not leave a pending
	// cancel for the next call.
	s.mu.Lock()
	s.running = true
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			s.mu.Lock()
			if s.running {
				s.Cancel()
			}
			s.mu.Unlock()
		case <-done:
		}
	}()
	var st C.llorch_generate_stats
	C.llorch_generate_stats_init(&st)
	var e *C.llorch_error
	err := check(call(cprompt, &cp, &st, &e), e)
	s.mu.Lock()
	s.running = false
	s.mu.Unlock()
	close(done)
	stats := Stats{uint32(st.prompt_tokens), uint32(st.generated_tokens), float64(st.prompt_seconds),
		float64(st.generate_seconds), StopReason(st.stop_reason)}
	return stats, err
}

// Piece is one streamed piece of text.
type Piece struct {
	Text  string
	Token int32
	// With GenerateParams.Logprobs > 0: the tokens sampled since the previous piece (those
	// whose text this piece completes), in order; else nil.
	Logprobs []TokenLogprob
}

// GenerateChan is Generate as a channel: pieces arrive on the first channel, which is closed
// at the end; the second then yields the result once.
func (s *Session) GenerateChan(ctx context.Context, prompt string, p GenerateParams) (<-chan Piece, <-chan error) {
	pieces := make(chan Piece, 16)
	result := make(chan error, 1)
	go func() {
		_, err := s.GeneratePieces(ctx, prompt, p, func(piece Piece) bool {
			select {
			case pieces <- piece:
				return true
			case <-ctx.Done():
				return false
			}
		})
		close(pieces)
		result <- err
	}()
	return pieces, result
}

// Tokenize text with the session's model.
func (s *Session) Tokenize(text string, addBOS, parseSpecial bool) ([]int32, error) {
	ctext := C.CString(text)
	defer C.free(unsafe.Pointer(ctext))
	var toks *C.int32_t
	var n C.size_t
	var e *C.llorch_error
	if err := check(C.llorch_session_tokenize(s.p, ctext, C.bool(addBOS), C.bool(parseSpecial), &toks, &n, &e), e); err != nil {
		return nil, err
	}
	return goTokens(toks, n), nil
}

// Detokenize ids to bytes (which may end inside a UTF-8 character).
func (s *Session) Detokenize(ids []int32) ([]byte, error) {
	var ptr *C.int32_t
	if len(ids) > 0 {
		ptr = (*C.int32_t)(C.malloc(C.size_t(4 * len(ids))))
		defer C.free(unsafe.Pointer(ptr))
		copy(unsafe.Slice((*int32)(unsafe.Pointer(ptr)), len(ids)), ids)
	}
	var out *C.char
	var n C.size_t
	var e *C.llorch_error
	if err := check(C.llorch_session_detokenize(s.p, ptr, C.size_t(len(ids)), &out, &n, &e), e); err != nil {
		return nil, err
	}
	defer C.llorch_string_free(out)
	return C.GoBytes(unsafe.Pointer(out), C.int(n)), nil
}
