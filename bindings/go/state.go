package llorch

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// Tokens returns the conversation so far: the tokens in the KV cache, then a sampled token
// not yet fed, if any.
func (s *Session) Tokens() ([]int32, error) {
	var toks *C.int32_t
	var n C.size_t
	var e *C.llorch_error
	if err := check(C.llorch_session_tokens(s.p, &toks, &n, &e), e); err != nil {
		return nil, err
	}
	return goTokens(toks, n), nil
}

// goTokens copies a token list from the library and frees it.
func goTokens(toks *C.int32_t, n C.size_t) []int32 {
	defer C.llorch_tokens_free(toks)
	out := make([]int32, int(n))
	if n > 0 {
		copy(out, unsafe.Slice((*int32)(unsafe.Pointer(toks)), int(n)))
	}
	return out
}

// Rewind takes the conversation back to its first n tokens (at most len(Tokens())): the
// next generation continues from there.
func (s *Session) Rewind(n uint32) error {
	var e *C.llorch_error
	return check(C.llorch_session_rewind(s.p, C.uint32_t(n), &e), e)
}

// Fork returns a new session with a copy of this one's conversation (tokens, KV cache,
// seed), which continues as this one would.
func (s *Session) Fork() (*Session, error) {
	f := &Session{}
	var e *C.llorch_error
	if err := check(C.llorch_session_fork(s.p, &f.p, &e), e); err != nil {
		return nil, err
	}
	runtime.SetFinalizer(f, (*Session).Close)
	return f, nil
}

// Save returns the conversation (tokens, the KV rows in use, seed) in llorch's versioned
// state format, which names the model it came from.
func (s *Session) Save() ([]byte, error) {
	var b *C.uint8_t
	var n C.size_t
	var e *C.llorch_error
	if err := check(C.llorch_session_save(s.p, &b, &n, &e), e); err != nil {
		return nil, err
	}
	defer C.llorch_bytes_free(b)
	return C.GoBytes(unsafe.Pointer(b), C.int(n)), nil
}

// Restore replaces the conversation with a saved one (from a session of the same model): the
// next generation continues as the saved session's would. A state of another model, a
// truncated or damaged one is an error (ErrInvalid) that changes nothing.
func (s *Session) Restore(state []byte) error {
	if len(state) == 0 {
		return &Error{InvalidArgument, "session state: empty"}
	}
	b := C.CBytes(state)
	defer C.free(b)
	var e *C.llorch_error
	return check(C.llorch_session_restore(s.p, (*C.uint8_t)(b), C.size_t(len(state)), &e), e)
}

// SaveFile is Save into a file (created or replaced).
func (s *Session) SaveFile(path string) error {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var e *C.llorch_error
	return check(C.llorch_session_save_file(s.p, cpath, &e), e)
}

// RestoreFile is Restore from a file.
func (s *Session) RestoreFile(path string) error {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var e *C.llorch_error
	return check(C.llorch_session_restore_file(s.p, cpath, &e), e)
}

// SpecialTokens returns the model's BOS, EOS and EOT ids, each -1 when it has none.
func (m *Model) SpecialTokens() (bos, eos, eot int32, err error) {
	var b, s, t C.int32_t
	var e *C.llorch_error
	err = check(C.llorch_model_special_tokens(m.p, &b, &s, &t, &e), e)
	return int32(b), int32(s), int32(t), err
}

// TokenText returns the bytes a token stands for (a control token's are its text; they may
// be part of a UTF-8 character).
func (m *Model) TokenText(token int32) ([]byte, error) {
	defer runtime.KeepAlive(m)
	var n C.size_t
	var e *C.llorch_error
	if err := check(C.llorch_model_token_text(m.p, C.int32_t(token), nil, 0, &n, &e), e); err != nil {
		return nil, err
	}
	if n == 0 {
		return []byte{}, nil
	}
	buf := make([]byte, int(n))
	err := check(C.llorch_model_token_text(m.p, C.int32_t(token), (*C.char)(unsafe.Pointer(&buf[0])), n, &n, &e), e)
	return buf, err
}

// TokenIsSpecial says whether a token is a control or user-defined one (prompt text matches
// it only when special tokens are parsed).
func (m *Model) TokenIsSpecial(token int32) (bool, error) {
	var b C.bool
	var e *C.llorch_error
	err := check(C.llorch_model_token_is_special(m.p, C.int32_t(token), &b, &e), e)
	return bool(b), err
}
