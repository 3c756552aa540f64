package llorch

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"context"
	"runtime/cgo"
	"unsafe"
)

// TopLogprob is one alternative at a position: a token and its log-probability.
type TopLogprob struct {
	Token   int32
	Logprob float32
}

// TokenLogprob is a generated token's log-probability (natural log, from the raw logits)
// and the most likely tokens at its position, most likely first (ties to the lower id).
type TokenLogprob struct {
	Token   int32
	Logprob float32
	Top     []TopLogprob
}

type pieceFunc func(Piece) bool

//export llorchGoOnPiece
func llorchGoOnPiece(h C.uintptr_t, p *C.llorch_piece) C.bool {
	f := cgo.Handle(h).Value().(pieceFunc)
	return C.bool(f(goPiece(p)))
}

// goPiece copies a piece the library lends for the duration of a call.
func goPiece(p *C.llorch_piece) Piece {
	piece := Piece{Text: C.GoStringN(p.text, C.int(p.len)), Token: int32(p.token)}
	if p.n_logprobs == 0 {
		return piece
	}
	for _, lp := range unsafe.Slice(p.logprobs, int(p.n_logprobs)) {
		t := TokenLogprob{Token: int32(lp.token), Logprob: float32(lp.logprob)}
		if lp.n_top > 0 {
			for _, alt := range unsafe.Slice(lp.top, int(lp.n_top)) {
				t.Top = append(t.Top, TopLogprob{int32(alt.token), float32(alt.logprob)})
			}
		}
		piece.Logprobs = append(piece.Logprobs, t)
	}
	return piece
}

// GeneratePieces is Generate handing whole Pieces to onPiece (may be nil): with
// p.Logprobs > 0 each carries the log-probabilities of its tokens.
func (s *Session) GeneratePieces(ctx context.Context, prompt string, p GenerateParams, onPiece func(Piece) bool) (Stats, error) {
	var h cgo.Handle
	if onPiece != nil {
		h = cgo.NewHandle(pieceFunc(onPiece))
		defer h.Delete()
	}
	return s.generate(ctx, prompt, p, func(cprompt *C.char, cp *C.llorch_generate_params, st *C.llorch_generate_stats, e **C.llorch_error) C.llorch_status {
		return C.llorch_go_generate_pieces(s.p, cprompt, cp, C.uintptr_t(h), st, e)
	})
}
