#include "shim.h"
#include "_cgo_export.h"

// user_data carries a cgo.Handle (an integer) to the exported Go functions.
static bool on_token(void *user_data, const char *text, size_t len, int32_t token) {
    return llorchGoOnToken((uintptr_t)user_data, (char *)text, len, token);
}

static bool on_progress(void *user_data, float fraction) {
    return llorchGoOnProgress((uintptr_t)user_data, fraction);
}

llorch_status llorch_go_generate(llorch_session *session, const char *prompt, const llorch_generate_params *params,
                                 uintptr_t handle, llorch_generate_stats *stats, llorch_error **err) {
    return llorch_session_generate(session, prompt, params, handle ? on_token : NULL, (void *)handle, stats, err);
}

static bool on_piece(void *user_data, const llorch_piece *piece) {
    return llorchGoOnPiece((uintptr_t)user_data, (llorch_piece *)piece);
}

llorch_status llorch_go_generate_pieces(llorch_session *session, const char *prompt,
                                        const llorch_generate_params *params, uintptr_t handle,
                                        llorch_generate_stats *stats, llorch_error **err) {
    return llorch_session_generate_pieces(session, prompt, params, handle ? on_piece : NULL, (void *)handle,
                                          stats, err);
}

llorch_status llorch_go_load(const llorch_context *ctx, const char *path, uintptr_t handle, llorch_model **out,
                             llorch_error **err) {
    return llorch_model_load(ctx, path, handle ? on_progress : NULL, (void *)handle, out, err);
}

static void on_log(void *user_data, int32_t level, const char *message) {
    llorchGoOnLog((uintptr_t)user_data, level, (char *)message);
}

void llorch_go_set_log(uintptr_t handle, int32_t min_level) {
    llorch_set_log_callback(handle ? on_log : NULL, (void *)handle, min_level);
}
