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

// Pooling says how an embedding pools the rows of its input's tokens (GGUF's
// <arch>.pooling_type numbers).
type Pooling int32

const (
	// PoolingModel: as the model says (its <arch>.pooling_type, else last-token pooling: a
	// decoder LM carries none, and only its last position has attended to the whole input).
	PoolingModel Pooling = C.LLORCH_POOLING_MODEL
	PoolingMean  Pooling = C.LLORCH_POOLING_MEAN
	PoolingCLS   Pooling = C.LLORCH_POOLING_CLS
	PoolingLast  Pooling = C.LLORCH_POOLING_LAST
)

// EmbedOptions of Model.Embed; the zero value is the model's pooling, not normalized.
type EmbedOptions struct {
	Pooling Pooling
	// Normalize scales each vector to unit L2 norm.
	Normalize bool
}

// EmbeddingInfo returns the size of the model's embedding vectors and the pooling that
// PoolingModel stands for.
func (m *Model) EmbeddingInfo() (dim int, pooling Pooling, err error) {
	var d C.uint32_t
	var p C.int32_t
	var e *C.llorch_error
	err = check(C.llorch_model_embedding_info(m.p, &d, &p, &e), e)
	runtime.KeepAlive(m)
	return int(d), Pooling(p), err
}

// Embed returns one vector per text: the final hidden state (after the final norm), pooled
// as o says. An empty text or one longer than the model's context is an ErrInvalid error
// naming its index.
func (m *Model) Embed(texts []string, o EmbedOptions) ([][]float32, error) {
	dim, _, err := m.EmbeddingInfo()
	if err != nil || len(texts) == 0 {
		return [][]float32{}, err
	}
	// The C strings live in C memory; the array of their pointers holds no Go pointers.
	ctexts := make([]*C.char, len(texts))
	for i, t := range texts {
		ctexts[i] = C.CString(t)
		defer C.free(unsafe.Pointer(ctexts[i]))
	}
	var p C.llorch_embed_params
	C.llorch_embed_params_init(&p)
	p.pooling = C.int32_t(o.Pooling)
	p.normalize = C.bool(o.Normalize)
	flat := make([]float32, len(texts)*dim)
	var e *C.llorch_error
	st := C.llorch_model_embed(m.p, &ctexts[0], C.size_t(len(texts)), &p,
		(*C.float)(unsafe.Pointer(&flat[0])), C.size_t(len(flat)), &e)
	runtime.KeepAlive(m)
	if err := check(st, e); err != nil {
		return nil, err
	}
	out := make([][]float32, len(texts))
	for i := range out {
		out[i] = flat[i*dim : (i+1)*dim : (i+1)*dim]
	}
	return out, nil
}
