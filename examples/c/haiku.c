/* The M0 anti-cheat check in plain C: the current minute becomes an English word, the model
 * writes a haiku that must contain it. The word comes from the clock at run time, so no
 * canned output can pass.
 *
 * usage: haiku [MODEL.gguf] [--device cpu|cuda:N] [--minute M]
 *        (MODEL defaults to $LLORCH_MODEL)
 */
#include "llorch.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const ONES[] = {"zero", "one", "two", "three", "four", "five", "six",
                                   "seven", "eight", "nine", "ten", "eleven", "twelve",
                                   "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
                                   "eighteen", "nineteen"};
static const char *const TENS[] = {"", "", "twenty", "thirty", "forty", "fifty"};

/* 0..59 in English words: "seven", "twenty", "forty-two". */
static void minute_word(int m, char *out, size_t cap) {
    if (m < 20)
        snprintf(out, cap, "%s", ONES[m]);
    else if (m % 10 == 0)
        snprintf(out, cap, "%s", TENS[m / 10]);
    else
        snprintf(out, cap, "%s-%s", TENS[m / 10], ONES[m % 10]);
}

/* The generated text, kept to check the word afterwards. */
typedef struct {
    char *text;
    size_t len, cap;
} buffer;

static bool on_token(void *user_data, const char *text, size_t len, int32_t token) {
    buffer *b = (buffer *)user_data;
    (void)token;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    if (b->len + len + 1 > b->cap) {
        size_t cap = (b->len + len + 1) * 2;
        char *p = (char *)realloc(b->text, cap);
        if (!p) return false; /* out of memory: stop generating */
        b->text = p;
        b->cap = cap;
    }
    memcpy(b->text + b->len, text, len);
    b->len += len;
    b->text[b->len] = '\0';
    return true;
}

/* Case-insensitive substring search. */
static bool contains_ci(const char *hay, const char *needle) {
    size_t n = strlen(needle);
    for (; *hay; hay++) {
        size_t i = 0;
        while (i < n && hay[i] && tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i])) i++;
        if (i == n) return true;
    }
    return false;
}

static int fail(const char *what, llorch_status st, llorch_error *err) {
    fprintf(stderr, "haiku: %s: %s (%s)\n", what, llorch_error_message(err), llorch_status_message(st));
    llorch_error_free(err);
    return 2;
}

int main(int argc, char **argv) {
    const char *model_path = getenv("LLORCH_MODEL");
    const char *device = "cpu";
    int minute = -1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--device") == 0 && i + 1 < argc) {
            device = argv[++i];
        } else if (strcmp(argv[i], "--minute") == 0 && i + 1 < argc) {
            char *end;
            long m = strtol(argv[++i], &end, 10);
            if (*end || m < 0 || m > 59) {
                fprintf(stderr, "haiku: --minute wants 0..59, not %s\n", argv[i]);
                return 2;
            }
            minute = (int)m;
        } else if (argv[i][0] != '-') {
            model_path = argv[i];
        } else {
            fprintf(stderr, "usage: haiku [MODEL.gguf] [--device cpu|cuda:N] [--minute M]\n");
            return 2;
        }
    }
    if (!model_path) {
        fprintf(stderr, "haiku: no model: pass a path or set LLORCH_MODEL\n");
        return 2;
    }
    if (llorch_abi_version() != LLORCH_ABI_VERSION) {
        fprintf(stderr, "haiku: library ABI %u, header ABI %u\n", llorch_abi_version(), LLORCH_ABI_VERSION);
        return 2;
    }

    llorch_context_params cp;
    llorch_context_params_init(&cp);
    if (strncmp(device, "cuda:", 5) == 0) {
        cp.device_type = LLORCH_DEVICE_CUDA;
        cp.device_index = (uint32_t)atoi(device + 5);
    } else if (strcmp(device, "cpu") != 0) {
        fprintf(stderr, "haiku: --device wants cpu or cuda:N, not %s\n", device);
        return 2;
    }

    if (minute < 0) {
        time_t now = time(NULL);
        struct tm *local = localtime(&now);
        minute = local ? local->tm_min : 0;
    }
    char word[32];
    minute_word(minute, word, sizeof word);
    char user[256];
    snprintf(user, sizeof user,
             "Write a haiku about GPU computing that includes the word \"%s\". Output only the haiku.", word);

    llorch_error *err = NULL;
    llorch_status st;
    llorch_context *ctx = NULL;
    llorch_model *model = NULL;
    llorch_session *session = NULL;
    char *prompt = NULL;
    buffer out = {NULL, 0, 0};
    int rc = 2;
    /* Declared before the first goto (C++ forbids jumping over initializations). */
    /* The fallback prompt: one worked example before the request, so a small model copies the
     * word as written (greedily the 0.5B writes "Fifty-five" when asked for "forty-five").
     * The example's word, seventy-two, is never a minute. */
    llorch_chat_message few_shot[3] = {
        {"user", "Write a haiku about GPU computing that includes the word \"seventy-two\". Output only the haiku."},
        {"assistant", "Seventy-two cores hum,\nthreads in parallel take flight,\nsilicon rivers."},
        {"user", user},
    };
    char *fallback = NULL;
    llorch_generate_params gp;
    llorch_generate_params_init(&gp); /* greedy by default */
    gp.max_tokens = 64;                /* a haiku is ~20-30 tokens; room for a preamble */
    llorch_generate_stats stats;
    llorch_generate_stats_init(&stats);

    if ((st = llorch_context_new(&cp, &ctx, &err)) != LLORCH_OK) { rc = fail("context", st, err); goto done; }
    if ((st = llorch_model_load(ctx, model_path, NULL, NULL, &model, &err)) != LLORCH_OK) {
        rc = fail(model_path, st, err);
        goto done;
    }
    if ((st = llorch_model_apply_chat_template(model, &few_shot[2], 1, true, NULL, &prompt, &err)) != LLORCH_OK ||
        (st = llorch_model_apply_chat_template(model, few_shot, 3, true, NULL, &fallback, &err)) != LLORCH_OK) {
        rc = fail("chat template", st, err);
        goto done;
    }
    /* The schedule, fixed and documented: the reference prompt, greedy; if the model leaves
     * the word out (the reference model does for 4 of the 60 minutes), the few-shot prompt,
     * greedy; then up to 3 tries of it at temperature 0.8, top-p 0.95, seeds 2..4. The word
     * always comes from the clock. */
    fprintf(stderr, "minute %d -> \"%s\"\n", minute, word);
    rc = 1;
    for (int attempt = 0; attempt < 5 && rc == 1; attempt++) {
        llorch_session_params sp;
        llorch_session_params_init(&sp);
        sp.seed = (uint64_t)attempt;
        gp.temperature = attempt < 2 ? 0.0f : 0.8f;
        gp.top_p = attempt < 2 ? 1.0f : 0.95f;
        if ((st = llorch_session_new(model, &sp, &session, &err)) != LLORCH_OK) { rc = fail("session", st, err); goto done; }
        out.len = 0;
        if (attempt == 1) fprintf(stderr, "\n(try 2: the few-shot prompt, greedy)\n");
        if (attempt > 1) fprintf(stderr, "\n(try %d: few-shot, temperature 0.8, top-p 0.95, seed %d)\n", attempt + 1, attempt);
        if ((st = llorch_session_generate(session, attempt == 0 ? prompt : fallback, &gp, on_token, &out, &stats, &err)) != LLORCH_OK) {
            rc = fail("generate", st, err);
            goto done;
        }
        printf("\n");
        fflush(stdout); /* the haiku, then the statistics on stderr */
        fprintf(stderr, "%u prompt tokens, %u generated (%.1f tok/s)\n", stats.prompt_tokens, stats.generated_tokens,
                stats.generate_seconds > 0 ? stats.generated_tokens / stats.generate_seconds : 0.0);
        if (out.text && contains_ci(out.text, word)) {
            fprintf(stderr, "ok: the haiku contains \"%s\"\n", word);
            rc = 0;
        } else {
            fprintf(stderr, "the haiku does not contain \"%s\"\n", word);
        }
        llorch_session_free(session);
        session = NULL;
    }
    if (rc == 1) fprintf(stderr, "FAIL: no haiku contained \"%s\"\n", word);

done:
    free(out.text);
    llorch_string_free(prompt);
    llorch_string_free(fallback);
    llorch_session_free(session);
    llorch_model_free(model);
    llorch_context_free(ctx);
    return rc;
}
