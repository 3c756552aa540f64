// C glue of the Go binding: one trampoline each for token callbacks, load progress and logs.
#include <stdint.h>
#include "llorch.h"

llorch_status llorch_go_generate(llorch_session *session, const char *prompt, const llorch_generate_params *params,
                                 uintptr_t handle, llorch_generate_stats *stats, llorch_error **err);
llorch_status llorch_go_load(const llorch_context *ctx, const char *path, uintptr_t handle, llorch_model **out,
                             llorch_error **err);
llorch_status llorch_go_generate_pieces(llorch_session *session, const char *prompt,
                                        const llorch_generate_params *params, uintptr_t handle,
                                        llorch_generate_stats *stats, llorch_error **err);
void llorch_go_set_log(uintptr_t handle, int32_t min_level);
