/* Misuse of the C API through the shared library, meant to run under valgrind: every call
 * gets its documented status, nothing crashes, nothing leaks.
 *
 * usage: misuse [MODEL.gguf]   (model-dependent cases run when a model is given or
 *                               $LLORCH_MODEL is set)
 */
#include "llorch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

/* Checks the status and that the message mentions `needle`; frees the error. */
static void expect(const char *what, llorch_status got, llorch_error *err, llorch_status want, const char *needle) {
    const char *msg = llorch_error_message(err);
    if (got != want || (needle && !strstr(msg, needle))) {
        fprintf(stderr, "FAIL %s: status %d (%s), want %d; message \"%s\", want \"%s\"\n", what, (int)got,
                llorch_status_message(got), (int)want, msg, needle ? needle : "");
        failures++;
    } else {
        printf("ok   %s: %s\n", what, got == LLORCH_OK ? "ok" : msg);
    }
    llorch_error_free(err);
}

#define EXPECT(call, want, needle)                       \
    do {                                                 \
        llorch_error *err_ = NULL;                       \
        llorch_error **err = &err_;                      \
        llorch_status st_ = call;                        \
        expect(#call, st_, err_, want, needle);          \
        (void)err;                                       \
    } while (0)

typedef struct {
    int pieces;
    int stop_after; /* 0 = never */
} counter;

static bool count_piece(void *user_data, const char *text, size_t len, int32_t token) {
    counter *c = (counter *)user_data;
    (void)text;
    (void)len;
    (void)token;
    c->pieces++;
    return c->stop_after == 0 || c->pieces < c->stop_after;
}

int main(int argc, char **argv) {
    const char *model_path = argc > 1 ? argv[1] : getenv("LLORCH_MODEL");
    const char bad_utf8[] = {'c', 'a', 'f', (char)0xc3, '(', 0};

    /* Free functions accept NULL. */
    llorch_error_free(NULL);
    llorch_string_free(NULL);
    llorch_tokens_free(NULL);
    llorch_context_free(NULL);
    llorch_model_free(NULL);
    llorch_session_free(NULL);
    llorch_generate_params_init(NULL);
    if (strcmp(llorch_status_message(12345), "unknown status") != 0) failures++;
    if (llorch_abi_version() != LLORCH_ABI_VERSION) failures++;

    llorch_context *ctx = NULL;
    EXPECT(llorch_context_new(NULL, NULL, err), LLORCH_ERR_INVALID_ARGUMENT, "out_context is NULL");
    llorch_context_params cp;
    llorch_context_params_init(&cp);
    cp.struct_size = 0;
    EXPECT(llorch_context_new(&cp, &ctx, err), LLORCH_ERR_INVALID_ARGUMENT, "struct_size");
    EXPECT(llorch_context_new(NULL, &ctx, err), LLORCH_OK, NULL);

    llorch_model *model = NULL;
    EXPECT(llorch_model_load(NULL, "x.gguf", NULL, NULL, &model, err), LLORCH_ERR_INVALID_ARGUMENT, "context is NULL");
    EXPECT(llorch_model_load(ctx, NULL, NULL, NULL, &model, err), LLORCH_ERR_INVALID_ARGUMENT, "path is NULL");
    EXPECT(llorch_model_load(ctx, bad_utf8, NULL, NULL, &model, err), LLORCH_ERR_INVALID_ARGUMENT, "UTF-8");
    EXPECT(llorch_model_load(ctx, "x.gguf", NULL, NULL, NULL, err), LLORCH_ERR_INVALID_ARGUMENT, "out_model is NULL");

    const char *name = NULL;
    uint32_t n = 0;
    char *text = NULL;
    EXPECT(llorch_model_architecture(NULL, &name, err), LLORCH_ERR_INVALID_ARGUMENT, "model is NULL");
    EXPECT(llorch_model_vocab_size(NULL, &n, err), LLORCH_ERR_INVALID_ARGUMENT, "model is NULL");
    EXPECT(llorch_model_apply_chat_template(NULL, NULL, 0, true, NULL, &text, err), LLORCH_ERR_INVALID_ARGUMENT,
           "model is NULL");

    llorch_session *session = NULL;
    EXPECT(llorch_session_new(NULL, NULL, &session, err), LLORCH_ERR_INVALID_ARGUMENT, "model is NULL");
    llorch_generate_params gp;
    llorch_generate_params_init(&gp);
    llorch_generate_stats stats;
    llorch_generate_stats_init(&stats);
    EXPECT(llorch_session_generate(NULL, bad_utf8, &gp, NULL, NULL, &stats, err), LLORCH_ERR_INVALID_ARGUMENT,
           "prompt is not valid UTF-8");
    EXPECT(llorch_session_generate(NULL, "hi", NULL, NULL, NULL, &stats, err), LLORCH_ERR_INVALID_ARGUMENT,
           "params is NULL");
    gp.struct_size = 3;
    EXPECT(llorch_session_generate(NULL, "hi", &gp, NULL, NULL, &stats, err), LLORCH_ERR_INVALID_ARGUMENT,
           "struct_size is 3");
    llorch_generate_params_init(&gp);
    EXPECT(llorch_session_generate(NULL, "hi", &gp, NULL, NULL, &stats, err), LLORCH_ERR_INVALID_ARGUMENT,
           "session is NULL");
    EXPECT(llorch_session_cancel(NULL), LLORCH_ERR_INVALID_ARGUMENT, NULL);

    if (model_path) {
        EXPECT(llorch_model_load(ctx, "/nonexistent.gguf", NULL, NULL, &model, err), LLORCH_ERR_IO, "nonexistent");
        EXPECT(llorch_model_load(ctx, model_path, NULL, NULL, &model, err), LLORCH_OK, NULL);
        if (model) {
            llorch_session_params sp;
            llorch_session_params_init(&sp);
            sp.n_ctx = 256;
            EXPECT(llorch_session_new(model, &sp, &session, err), LLORCH_OK, NULL);
            /* The model goes first; the session keeps it alive. */
            llorch_model_free(model);
            model = NULL;
            if (session) {
                counter c = {0, 1};
                gp.max_tokens = 8;
                EXPECT(llorch_session_generate(session, "Hello", &gp, count_piece, &c, &stats, err),
                       LLORCH_ERR_CANCELLED, "cancel");
                if (c.pieces != 1 || stats.stop_reason != LLORCH_STOP_CANCELLED) failures++;
                EXPECT(llorch_session_cancel(session), LLORCH_OK, NULL);
                EXPECT(llorch_session_cancel(session), LLORCH_OK, NULL);
                c.pieces = 0;
                c.stop_after = 0;
                EXPECT(llorch_session_generate(session, " world", &gp, count_piece, &c, &stats, err),
                       LLORCH_ERR_CANCELLED, "cancel");
                if (c.pieces != 0) failures++;
                EXPECT(llorch_session_generate(session, " world", &gp, count_piece, &c, &stats, err), LLORCH_OK,
                       NULL);
                if (c.pieces == 0) failures++;
                EXPECT(llorch_session_generate(session, bad_utf8, &gp, count_piece, &c, &stats, err),
                       LLORCH_ERR_INVALID_ARGUMENT, "UTF-8");
            }
        }
    } else {
        printf("skip model cases: no model (pass a path or set LLORCH_MODEL)\n");
    }
    llorch_session_free(session);
    llorch_model_free(model);
    llorch_context_free(ctx);
    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("all misuse cases behaved\n");
    return 0;
}
