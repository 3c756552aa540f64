/* The pull form of generation (llorch_session_begin / llorch_session_next), checked against
 * the callback form: the same prompt gives the same text, read here through a 4-byte buffer so
 * that pieces come in parts cut between UTF-8 characters. Then a cancel between two calls, the
 * end's statistics, and the calls that must be refused.
 *
 * usage: pull [MODEL.gguf]   (MODEL defaults to $LLORCH_MODEL)
 * Exit status 0 when every check holds; prints what failed otherwise.
 */
#include "llorch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char text[8192];
    size_t len;
} text_buf;

static void append(text_buf *b, const char *text, size_t len) {
    if (b->len + len < sizeof b->text) {
        memcpy(b->text + b->len, text, len);
        b->len += len;
        b->text[b->len] = '\0';
    }
}

static bool on_token(void *user_data, const char *text, size_t len, int32_t token) {
    (void)token;
    append((text_buf *)user_data, text, len);
    return true;
}

static int failures = 0;

static void check(bool ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "pull: FAILED: %s\n", what);
        failures++;
    }
}

/* Status of a call; the error's message goes to stderr when it is not the one expected. The
 * error is passed by address: C leaves the order of argument evaluation open, so its value is
 * read here, after the call has written it. */
static llorch_status expect(llorch_status st, llorch_error **err, llorch_status want, const char *what) {
    if (st != want) {
        fprintf(stderr, "pull: %s: got %s (%s), expected %s\n", what, llorch_status_message(st),
                llorch_error_message(*err), llorch_status_message(want));
        failures++;
    }
    llorch_error_free(*err);
    *err = NULL;
    return st;
}

/* A UTF-8 string has no cut character: every lead byte is followed by its continuation bytes. */
static bool whole_utf8(const char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        unsigned char c = (unsigned char)s[i];
        size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (n == 0 || i + n > len) return false;
        for (size_t k = 1; k < n; k++)
            if (((unsigned char)s[i + k] >> 6) != 2) return false;
        i += n;
    }
    return true;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : getenv("LLORCH_MODEL");
    if (!path) {
        fprintf(stderr, "usage: pull MODEL.gguf (or set LLORCH_MODEL)\n");
        return 2;
    }
    llorch_error *err = NULL;
    llorch_context *ctx = NULL;
    llorch_model *model = NULL;
    llorch_session *s = NULL;
    if (expect(llorch_context_new(NULL, &ctx, &err), &err, LLORCH_OK, "context") != LLORCH_OK) return 2;
    if (expect(llorch_model_load(ctx, path, NULL, NULL, &model, &err), &err, LLORCH_OK, "load") != LLORCH_OK)
        return 2;
    llorch_session_params sp;
    llorch_session_params_init(&sp);
    sp.n_ctx = 1024;
    if (expect(llorch_session_new(model, &sp, &s, &err), &err, LLORCH_OK, "session") != LLORCH_OK) return 2;

    llorch_chat_message msg = {"user", "Write the French word café three times, then say why."};
    char *prompt = NULL;
    expect(llorch_model_apply_chat_template(model, &msg, 1, true, NULL, &prompt, &err), &err, LLORCH_OK,
           "chat template");
    llorch_generate_params gp;
    llorch_generate_params_init(&gp);
    gp.max_tokens = 40;

    /* 1. The callback form. */
    text_buf pushed = {{0}, 0};
    llorch_generate_stats push_stats;
    llorch_generate_stats_init(&push_stats);
    expect(llorch_session_generate(s, prompt, &gp, on_token, &pushed, &push_stats, &err), &err, LLORCH_OK,
           "generate");

    /* 2. The pull form, same prompt from an empty conversation, through a 4-byte buffer. */
    expect(llorch_session_reset(s, &err), &err, LLORCH_OK, "reset");
    expect(llorch_session_begin(s, prompt, &gp, &err), &err, LLORCH_OK, "begin");
    text_buf pulled = {{0}, 0};
    char buf[4];
    size_t len = 0;
    int32_t token = -1;
    bool done = false;
    int calls = 0, refused = 0;
    while (!done && calls < 10000) {
        if (calls == 3) {
            /* A buffer under one character is refused and does not end the generation. */
            if (expect(llorch_session_next(s, buf, 3, &len, &token, &done, &err), &err,
                       LLORCH_ERR_INVALID_ARGUMENT, "next with cap 3") == LLORCH_ERR_INVALID_ARGUMENT)
                refused++;
        }
        if (expect(llorch_session_next(s, buf, sizeof buf, &len, &token, &done, &err), &err, LLORCH_OK,
                   "next") != LLORCH_OK)
            break;
        calls++;
        check(len <= sizeof buf, "a part longer than the buffer");
        check(done || len > 0, "an empty part before the end");
        check(whole_utf8(buf, len), "a part that cuts a UTF-8 character");
        append(&pulled, buf, len);
    }
    check(done && len == 0, "the end is a call with done and no text");
    check(refused == 1, "cap 3 was refused");
    check(pulled.len == pushed.len && memcmp(pulled.text, pushed.text, pushed.len) == 0,
          "the pulled text equals the pushed text");
    llorch_generate_stats pull_stats;
    llorch_generate_stats_init(&pull_stats);
    expect(llorch_session_stats(s, &pull_stats, &err), &err, LLORCH_OK, "stats");
    check(pull_stats.generated_tokens == push_stats.generated_tokens, "same number of tokens");
    check(pull_stats.prompt_tokens == push_stats.prompt_tokens, "same prompt tokens");
    check(pull_stats.stop_reason == push_stats.stop_reason, "same stop reason");
    printf("pull: %d calls, %zu bytes, %u tokens: %s\n", calls, pulled.len, pull_stats.generated_tokens,
           pulled.text);

    /* 3. After the end, next is refused until the next begin. */
    expect(llorch_session_next(s, buf, sizeof buf, &len, &token, &done, &err), &err,
           LLORCH_ERR_INVALID_ARGUMENT, "next after the end");

    /* 4. A cancel between two calls ends the generation at the next call. */
    expect(llorch_session_begin(s, " Again, please.", &gp, &err), &err, LLORCH_OK, "begin 2");
    expect(llorch_session_next(s, buf, sizeof buf, &len, &token, &done, &err), &err, LLORCH_OK, "next 2");
    check(!done, "the second generation has a first piece");
    expect(llorch_session_cancel(s), &err, LLORCH_OK, "cancel");
    expect(llorch_session_next(s, buf, sizeof buf, &len, &token, &done, &err), &err, LLORCH_ERR_CANCELLED,
           "next after cancel");
    expect(llorch_session_stats(s, &pull_stats, &err), &err, LLORCH_OK, "stats 2");
    check(pull_stats.stop_reason == LLORCH_STOP_CANCELLED, "stop reason cancelled");

    llorch_string_free(prompt);
    llorch_session_free(s);
    llorch_model_free(model);
    llorch_context_free(ctx);
    if (failures) {
        fprintf(stderr, "pull: %d check(s) failed\n", failures);
        return 1;
    }
    printf("pull: OK\n");
    return 0;
}
