/* Logprobs, session state and tokenizer queries through the C API:
 * - llorch_session_generate_pieces with logprobs: each greedy token is its position's most
 *   likely one, the top lists are sorted, the reported tokens are the ones generated; the pull
 *   form (llorch_session_next_piece) reports the same;
 * - save -> restore into a new session -> continue gives the same tokens as an uninterrupted
 *   run (buffer and file); a fork continues alike; rewind then generate equals the first time;
 *   a truncated or damaged state is refused and changes nothing;
 * - BOS/EOS/EOT ids, a token's bytes, whether it is special.
 *
 * usage: state [MODEL.gguf]   (MODEL defaults to $LLORCH_MODEL)
 * Exit status 0 when every check holds; prints what failed otherwise.
 */
#include "llorch.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int failures = 0;

static void check(bool ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "state: FAILED: %s\n", what);
        failures++;
    }
}

/* Status of a call; the error's message goes to stderr when it is not the one expected. */
static llorch_status expect(llorch_status st, llorch_error **err, llorch_status want, const char *what) {
    if (st != want) {
        fprintf(stderr, "state: %s: got %s (%s), expected %s\n", what, llorch_status_message(st),
                llorch_error_message(*err), llorch_status_message(want));
        failures++;
    }
    llorch_error_free(*err);
    *err = NULL;
    return st;
}

#define MAX_TOKENS 64

/* What a generation reported: the tokens of its logprobs, checked as they come. */
typedef struct {
    int32_t tokens[MAX_TOKENS];
    size_t n;
    size_t n_top;
    bool greedy;
} report;

static report new_report(size_t n_top, bool greedy) {
    report r;
    memset(&r, 0, sizeof r);
    r.n_top = n_top;
    r.greedy = greedy;
    return r;
}

static void take_piece(report *r, const llorch_piece *p) {
    for (size_t i = 0; i < p->n_logprobs; i++) {
        const llorch_token_logprob *lp = &p->logprobs[i];
        check(lp->logprob <= 0.0f && isfinite(lp->logprob), "a log-probability is <= 0");
        check(lp->n_top == r->n_top, "as many alternatives as asked");
        double mass = 0.0;
        for (size_t k = 0; k < lp->n_top; k++) {
            mass += exp(lp->top[k].logprob);
            if (k > 0) check(lp->top[k - 1].logprob >= lp->top[k].logprob, "top sorted");
        }
        check(mass <= 1.0 + 1e-5, "top probabilities sum to at most 1");
        if (r->greedy) {
            check(lp->top[0].token == lp->token, "greedy picks the most likely token");
            check(lp->top[0].logprob == lp->logprob, "its logprob is the top one's");
        }
        if (r->n < MAX_TOKENS) r->tokens[r->n++] = lp->token;
    }
}

static bool on_piece(void *user_data, const llorch_piece *piece) {
    take_piece((report *)user_data, piece);
    return true;
}

/* The last n tokens of the session's conversation. */
static void last_tokens(llorch_session *s, int32_t *out, size_t n) {
    llorch_error *err = NULL;
    int32_t *ids = NULL;
    size_t len = 0;
    if (expect(llorch_session_tokens(s, &ids, &len, &err), &err, LLORCH_OK, "tokens") == LLORCH_OK &&
        len >= n)
        memcpy(out, ids + (len - n), n * sizeof *out);
    llorch_tokens_free(ids);
}

/* One turn, greedy or seeded; the tokens it generated into out (at most MAX_TOKENS). */
static size_t turn(llorch_session *s, const char *prompt, float temperature, int32_t *out) {
    llorch_error *err = NULL;
    llorch_generate_params gp;
    llorch_generate_params_init(&gp);
    gp.max_tokens = 16;
    gp.temperature = temperature;
    llorch_generate_stats st;
    llorch_generate_stats_init(&st);
    if (expect(llorch_session_generate(s, prompt, &gp, NULL, NULL, &st, &err), &err, LLORCH_OK,
               "generate") != LLORCH_OK)
        return 0;
    last_tokens(s, out, st.generated_tokens);
    return st.generated_tokens;
}

static bool same(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    return na == nb && na > 0 && memcmp(a, b, na * sizeof *a) == 0;
}

static const char *T1 = "Once upon a time, in a small village by the sea, there lived";
static const char *T2 = " The next morning, the old fisherman";

static llorch_session *new_session(llorch_model *model, uint64_t seed) {
    llorch_error *err = NULL;
    llorch_session_params sp;
    llorch_session_params_init(&sp);
    sp.n_ctx = 512;
    sp.seed = seed;
    llorch_session *s = NULL;
    expect(llorch_session_new(model, &sp, &s, &err), &err, LLORCH_OK, "session_new");
    return s;
}

static void logprobs(llorch_model *model) {
    llorch_error *err = NULL;
    llorch_session *s = new_session(model, 0);
    llorch_generate_params gp;
    llorch_generate_params_init(&gp);
    gp.max_tokens = 12;
    gp.logprobs = 5;
    report pushed = new_report(5, true);
    expect(llorch_session_generate_pieces(s, T1, &gp, on_piece, &pushed, NULL, &err), &err,
           LLORCH_OK, "generate_pieces");
    int32_t gen[MAX_TOKENS];
    check(pushed.n > 0 && pushed.n <= 12, "tokens reported");
    last_tokens(s, gen, pushed.n);
    check(same(pushed.tokens, pushed.n, gen, pushed.n), "reported tokens are the generated ones");

    /* The pull form, through a 4-byte buffer: the same tokens. */
    expect(llorch_session_reset(s, &err), &err, LLORCH_OK, "reset");
    expect(llorch_session_begin(s, T1, &gp, &err), &err, LLORCH_OK, "begin");
    report pulled = new_report(5, true);
    char buf[4];
    for (;;) {
        llorch_piece piece;
        piece.struct_size = sizeof piece;
        bool done = false;
        if (expect(llorch_session_next_piece(s, buf, sizeof buf, &piece, &done, &err), &err,
                   LLORCH_OK, "next_piece") != LLORCH_OK || done)
            break;
        check(piece.text == buf && piece.len <= sizeof buf, "the piece's text is in buf");
        take_piece(&pulled, &piece);
    }
    check(same(pushed.tokens, pushed.n, pulled.tokens, pulled.n), "pull reports the push's tokens");

    /* Seeded sampling reports the tokens it drew. */
    llorch_session *r = new_session(model, 7);
    gp.temperature = 0.9f;
    gp.logprobs = 2;
    report drawn = new_report(2, false);
    expect(llorch_session_generate_pieces(r, T1, &gp, on_piece, &drawn, NULL, &err), &err,
           LLORCH_OK, "generate_pieces, sampled");
    last_tokens(r, gen, drawn.n);
    check(same(drawn.tokens, drawn.n, gen, drawn.n), "sampled tokens reported");
    llorch_session_free(r);
    llorch_session_free(s);
}

static void state(llorch_model *model, const char *path) {
    llorch_error *err = NULL;
    for (int k = 0; k < 2; k++) {
        float temp = k == 0 ? 0.0f : 0.9f;
        int32_t a1[MAX_TOKENS], a2[MAX_TOKENS], b1[MAX_TOKENS], c2[MAX_TOKENS];
        llorch_session *a = new_session(model, 11);
        size_t na1 = turn(a, T1, temp, a1);
        size_t na2 = turn(a, T2, temp, a2);
        llorch_session *b = new_session(model, 11);
        size_t nb1 = turn(b, T1, temp, b1);
        check(same(a1, na1, b1, nb1), "same first turn");

        uint8_t *bytes = NULL;
        size_t len = 0;
        expect(llorch_session_save(b, &bytes, &len, &err), &err, LLORCH_OK, "save");
        llorch_session *c = new_session(model, 999);
        /* Refused, nothing changed: truncated, damaged. */
        expect(llorch_session_restore(c, bytes, len - 1, &err), &err, LLORCH_ERR_INVALID_ARGUMENT,
               "restore of a truncated state");
        bytes[len / 2] ^= 1;
        expect(llorch_session_restore(c, bytes, len, &err), &err, LLORCH_ERR_INVALID_ARGUMENT,
               "restore of a damaged state");
        bytes[len / 2] ^= 1;
        uint32_t n_past = 1;
        llorch_session_context_usage(c, &n_past, NULL, NULL);
        check(n_past == 0, "a refused restore changes nothing");
        expect(llorch_session_restore(c, bytes, len, &err), &err, LLORCH_OK, "restore");
        llorch_bytes_free(bytes);
        size_t nc2 = turn(c, T2, temp, c2);
        check(same(a2, na2, c2, nc2), "save, restore, continue = uninterrupted");

        /* Through a file, and a fork of the restored session. */
        expect(llorch_session_save_file(b, path, &err), &err, LLORCH_OK, "save_file");
        llorch_session *d = new_session(model, 5);
        expect(llorch_session_restore_file(d, path, &err), &err, LLORCH_OK, "restore_file");
        llorch_session *f = NULL;
        expect(llorch_session_fork(d, &f, &err), &err, LLORCH_OK, "fork");
        size_t nd2 = turn(d, T2, temp, c2);
        check(same(a2, na2, c2, nd2), "restored from a file = uninterrupted");
        size_t nf2 = turn(f, T2, temp, c2);
        check(same(a2, na2, c2, nf2), "fork = uninterrupted");
        remove(path);

        /* Rewind b's second turn away and generate it again (greedy: the same tokens). */
        int32_t *ids = NULL;
        size_t n_ids = 0;
        expect(llorch_session_tokens(b, &ids, &n_ids, &err), &err, LLORCH_OK, "tokens");
        llorch_tokens_free(ids);
        if (k == 0) {
            size_t n1 = turn(b, T2, temp, c2);
            expect(llorch_session_rewind(b, (uint32_t)n_ids, &err), &err, LLORCH_OK, "rewind");
            size_t n2 = turn(b, T2, temp, b1);
            check(same(c2, n1, b1, n2), "rewind then generate = the first time");
        }
        expect(llorch_session_rewind(b, (uint32_t)n_ids + 1000, &err), &err,
               LLORCH_ERR_INVALID_ARGUMENT, "rewind past the end");
        llorch_session_free(a);
        llorch_session_free(b);
        llorch_session_free(c);
        llorch_session_free(d);
        llorch_session_free(f);
    }
}

static void vocab(llorch_model *model) {
    llorch_error *err = NULL;
    int32_t bos = -2, eos = -2, eot = -2;
    expect(llorch_model_special_tokens(model, &bos, &eos, &eot, &err), &err, LLORCH_OK,
           "special_tokens");
    check(eos >= 0, "the model has an EOS token");
    size_t len = 0;
    expect(llorch_model_token_text(model, eos, NULL, 0, &len, &err), &err, LLORCH_OK,
           "token_text length");
    char text[64] = {0};
    check(len > 0 && len < sizeof text, "EOS has text");
    expect(llorch_model_token_text(model, eos, text, sizeof text, &len, &err), &err, LLORCH_OK,
           "token_text");
    bool special = false;
    expect(llorch_model_token_is_special(model, eos, &special, &err), &err, LLORCH_OK, "is_special");
    check(special, "EOS is special");
    printf("state: BOS %d EOS %d (%.*s) EOT %d\n", bos, eos, (int)len, text, eot);
    /* A plain word's token is not special and round-trips through its text. */
    int32_t *ids = NULL;
    size_t n = 0;
    expect(llorch_model_tokenize(model, "hello", false, false, &ids, &n, &err), &err, LLORCH_OK,
           "tokenize");
    if (n == 1) {
        expect(llorch_model_token_is_special(model, ids[0], &special, &err), &err, LLORCH_OK,
               "is_special");
        check(!special, "'hello' is not special");
        expect(llorch_model_token_text(model, ids[0], text, sizeof text, &len, &err), &err,
               LLORCH_OK, "token_text");
        check(len == 5 && memcmp(text, "hello", 5) == 0, "'hello' has its bytes");
    } else {
        check(false, "'hello' is one token");
    }
    llorch_tokens_free(ids);
    uint32_t vocab = 0;
    expect(llorch_model_vocab_size(model, &vocab, &err), &err, LLORCH_OK, "vocab_size");
    expect(llorch_model_token_text(model, (int32_t)vocab, text, sizeof text, &len, &err), &err,
           LLORCH_ERR_INVALID_ARGUMENT, "token_text past the vocabulary");
    expect(llorch_model_token_is_special(model, -1, &special, &err), &err,
           LLORCH_ERR_INVALID_ARGUMENT, "is_special of -1");
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : getenv("LLORCH_MODEL");
    if (!path) {
        fprintf(stderr, "usage: state MODEL.gguf (or set LLORCH_MODEL)\n");
        return 2;
    }
    llorch_error *err = NULL;
    llorch_context_params cp;
    llorch_context_params_init(&cp);
    llorch_context *ctx = NULL;
    llorch_model *model = NULL;
    if (expect(llorch_context_new(&cp, &ctx, &err), &err, LLORCH_OK, "context") != LLORCH_OK ||
        expect(llorch_model_load(ctx, path, NULL, NULL, &model, &err), &err, LLORCH_OK, "load") !=
            LLORCH_OK)
        return 1;
    char file[64];
    snprintf(file, sizeof file, "/tmp/llorch-state-c-%ld", (long)clock());
    logprobs(model);
    state(model, file);
    vocab(model);
    llorch_model_free(model);
    llorch_context_free(ctx);
    if (failures) {
        fprintf(stderr, "state: %d checks failed\n", failures);
        return 1;
    }
    printf("state: all checks passed\n");
    return 0;
}
