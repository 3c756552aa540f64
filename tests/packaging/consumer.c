/* Uses an installed llorch as a C user does (scripts/test-packaging.sh builds it through
 * pkg-config and through CMake): header and library must agree on the ABI and the release,
 * then one greedy answer to a question whose answer is known.
 * usage: consumer MODEL.gguf */
#include <llorch.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool append(void *user_data, const char *text, size_t len, int32_t token) {
    char *answer = (char *)user_data;
    size_t have = strlen(answer);
    (void)token;
    if (have + len >= 1024) return false;
    memcpy(answer + have, text, len);
    answer[have + len] = '\0';
    return true;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: consumer MODEL.gguf\n");
        return 2;
    }
    if (llorch_abi_version() != LLORCH_ABI_VERSION || strcmp(llorch_version(), LLORCH_VERSION_STRING) != 0) {
        fprintf(stderr, "consumer: header %s (ABI %d), library %s (ABI %u)\n", LLORCH_VERSION_STRING,
                LLORCH_ABI_VERSION, llorch_version(), llorch_abi_version());
        return 1;
    }
    char version[32];
    snprintf(version, sizeof version, "%d.%d.%d", LLORCH_VERSION_MAJOR, LLORCH_VERSION_MINOR, LLORCH_VERSION_PATCH);
    if (strncmp(version, LLORCH_VERSION_STRING, strlen(version)) != 0) {
        fprintf(stderr, "consumer: version macros %s disagree with %s\n", version, LLORCH_VERSION_STRING);
        return 1;
    }

    llorch_error *err = NULL;
    llorch_context *ctx = NULL;
    llorch_model *model = NULL;
    llorch_session *session = NULL;
    char *prompt = NULL;
    char answer[1024] = "";
    int rc = 1;
    llorch_chat_message question = {"user", "What is the capital of France?"};
    llorch_generate_params gp;
    llorch_generate_params_init(&gp);
    gp.max_tokens = 16;
    if (llorch_context_new(NULL, &ctx, &err) != LLORCH_OK ||
        llorch_model_load(ctx, argv[1], NULL, NULL, &model, &err) != LLORCH_OK ||
        llorch_session_new(model, NULL, &session, &err) != LLORCH_OK ||
        llorch_model_apply_chat_template(model, &question, 1, true, NULL, &prompt, &err) != LLORCH_OK ||
        llorch_session_generate(session, prompt, &gp, append, answer, NULL, &err) != LLORCH_OK) {
        fprintf(stderr, "consumer: %s\n", llorch_error_message(err));
        goto done;
    }
    printf("llorch %s: %s\n", llorch_version(), answer);
    rc = strstr(answer, "Paris") ? 0 : 1;
    if (rc) fprintf(stderr, "consumer: the answer does not name Paris\n");
done:
    llorch_error_free(err);
    llorch_string_free(prompt);
    llorch_session_free(session);
    llorch_model_free(model);
    llorch_context_free(ctx);
    return rc;
}
