// What a dependent kernel launch costs on this GPU, against a grid-wide barrier inside one
// persistent kernel: the floor under a decode step made of many small dependent kernels.
// Build and run on the device: nvcc -O3 -arch=sm_90 -o hop_cost bench/gpu/hop_cost.cu && ./hop_cost
// Each case: N dependent steps (a kernel each, or a barrier each) captured once, replayed R
// times; prints microseconds per step. A step's blocks each load one value and store one; the
// order between steps is the launches' (or the barrier's) alone: no data passes between them.
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>

#include "check.cuh"

constexpr int N = 168;  // steps a replay (24 x 7: near the 0.5B step's ~196 launches, 8 a layer)
constexpr int R = 50;

// One step: wait for the kernel before (PDL: its completion and its stores), let the next one
// launch, then one load and one store a block (a token of a product's work).
__global__ void step_kernel(float* buf, int pdl) {
    if (pdl) asm volatile("griddepcontrol.wait;" ::: "memory");
    if (pdl) asm volatile("griddepcontrol.launch_dependents;");
    if (threadIdx.x == 0) {
        const float v = buf[(blockIdx.x + 1) % gridDim.x];
        buf[gridDim.x + blockIdx.x] = v + 1.f;
    }
}

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

// N steps in one kernel, a grid-wide barrier between them (count, then a generation flag).
__global__ void persistent_kernel(float* buf, unsigned* count, unsigned* gen) {
    __shared__ unsigned my_gen;
    if (threadIdx.x == 0) my_gen = ld_acquire(gen);
    __syncthreads();
    for (int s = 0; s < N; s++) {
        if (threadIdx.x == 0) {
            const float v = buf[(blockIdx.x + 1) % gridDim.x];
            buf[gridDim.x + blockIdx.x] = v + 1.f;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            const unsigned g = my_gen;
            __threadfence();
            if (atomicAdd(count, 1) == gridDim.x - 1) {
                *count = 0;
                __threadfence();
                atomicExch(gen, g + 1);
            } else {
                while (ld_acquire(gen) == g) {
                }
            }
            my_gen = g + 1;
        }
        __syncthreads();
    }
}

static float time_graph(cudaStream_t st, cudaGraphExec_t ex) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    CK(cudaGraphLaunch(ex, st));  // warm
    CK(cudaStreamSynchronize(st));
    CK(cudaEventRecord(a, st));
    for (int r = 0; r < R; r++) CK(cudaGraphLaunch(ex, st));
    CK(cudaEventRecord(b, st));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    return ms * 1000.f / R;  // us per replay
}

int main() {
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    printf("%s, %d SMs\n", p.name, p.multiProcessorCount);
    const int sms = p.multiProcessorCount;
    float* buf;
    unsigned *count, *gen;
    CK(cudaMalloc(&buf, 2 * 4096 * sizeof(float)));
    CK(cudaMalloc(&count, 4));
    CK(cudaMalloc(&gen, 4));
    CK(cudaMemset(buf, 0, 2 * 4096 * sizeof(float)));
    CK(cudaMemset(count, 0, 4));
    CK(cudaMemset(gen, 0, 4));
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    CK(cudaFuncSetAttribute(step_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 65536));
    for (int per_sm : {1, 3}) {
        const int grid = sms * per_sm;
        for (int c = 0; c < 3; c++) {
            const int pdl = c > 0, smem = c == 2 ? 65536 : 0;
            cudaGraph_t g;
            CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
            for (int i = 0; i < N; i++) {
                cudaLaunchConfig_t cfg = {};
                cfg.gridDim = dim3(grid);
                cfg.blockDim = dim3(256);
                cfg.dynamicSmemBytes = smem;
                cfg.stream = st;
                cudaLaunchAttribute at[1];
                at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
                at[0].val.programmaticStreamSerializationAllowed = 1;
                cfg.attrs = at;
                cfg.numAttrs = pdl ? 1 : 0;
                CK(cudaLaunchKernelEx(&cfg, step_kernel, buf, pdl));
            }
            CK(cudaStreamEndCapture(st, &g));
            cudaGraphExec_t ex;
            CK(cudaGraphInstantiate(&ex, g, 0));
            const float us = time_graph(st, ex);
            printf("%4d blocks x 256 (%2d KiB shared): %d dependent kernels in a graph, %s: %.2f us a "
                   "kernel\n", grid, smem >> 10, N, pdl ? "programmatic launch" : "plain", us / N);
            CK(cudaGraphExecDestroy(ex));
            CK(cudaGraphDestroy(g));
        }
        // One persistent kernel (cooperative: every block resident), N barriers.
        cudaGraph_t g;
        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        void* args[] = {&buf, &count, &gen};
        CK(cudaLaunchCooperativeKernel((void*)persistent_kernel, dim3(grid), dim3(256), args, 0, st));
        CK(cudaStreamEndCapture(st, &g));
        cudaGraphExec_t ex;
        CK(cudaGraphInstantiate(&ex, g, 0));
        const float us = time_graph(st, ex);
        printf("%4d blocks x 256: one persistent kernel, %d grid barriers: %.2f us a barrier\n", grid,
               N, us / N);
        CK(cudaGraphExecDestroy(ex));
        CK(cudaGraphDestroy(g));
    }
    return 0;
}
