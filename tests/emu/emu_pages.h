// Paged KV caches for the emulated attention kernels (kernels/attn_common.cuh): a copy of
// contiguous caches kc, vc ([n_kv][max_ctx][hd]) as layer `layer` of `n_layer` in pages of
// KV_PAGE positions, the pages allocated in a shuffled order so that the table's entries are
// not in address order (a kernel that ignored the table, or indexed it wrongly, reads other
// values). The other layers' rows hold NaN (a kernel reading the wrong layer fails).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "splitmix.h"

template <class KV> KV kv_nan() { return KV(NAN); }
template <> inline __half kv_nan<__half>() { return __float2half_rn(NAN); }

template <class KV> struct Paged {
    int n_kv, max_ctx, hd, n_layer, layer;
    std::vector<std::vector<KV>> store;       // the pages' memory
    std::vector<int> slot;                    // page i of the cache is store[slot[i]]
    std::vector<unsigned long long> table;    // what the kernels read: page addresses

    Paged(const std::vector<KV>& kc, const std::vector<KV>& vc, int n_kv_, int max_ctx_, int hd_,
          int n_layer_, int layer_, uint64_t seed)
        : n_kv(n_kv_), max_ctx(max_ctx_), hd(hd_), n_layer(n_layer_), layer(layer_) {
        const int n_pages = (max_ctx + KV_PAGE - 1) / KV_PAGE;
        const size_t page_values = (size_t)2 * n_layer * n_kv * KV_PAGE * hd;
        store.assign(n_pages, std::vector<KV>(page_values, kv_nan<KV>()));
        slot.resize(n_pages);
        for (int i = 0; i < n_pages; i++) slot[i] = i;
        SplitMix64 rng{seed};
        for (int i = n_pages - 1; i > 0; i--) std::swap(slot[i], slot[(int)(rng.next() % (uint64_t)(i + 1))]);
        for (int i = 0; i < n_pages; i++) table.push_back((unsigned long long)store[slot[i]].data());
        for (int p = 0; p < max_ctx; p++)
            for (int h = 0; h < n_kv; h++)
                for (int d = 0; d < hd; d++) {
                    at(0, h, p, d) = kc[((size_t)h * max_ctx + p) * hd + d];
                    at(1, h, p, d) = vc[((size_t)h * max_ctx + p) * hd + d];
                }
    }

    // The value of K (kv = 0) or V (kv = 1), head h, position p, dimension d.
    KV& at(int kv, int h, int p, int d) {
        const size_t row = ((size_t)(2 * layer + kv) * n_kv + h) * KV_PAGE + p % KV_PAGE;
        return store[slot[p / KV_PAGE]][row * hd + d];
    }

    // The pages' rows back into contiguous caches (after a kernel stored into them).
    void gather(std::vector<KV>& kc, std::vector<KV>& vc) {
        for (int p = 0; p < max_ctx; p++)
            for (int h = 0; h < n_kv; h++)
                for (int d = 0; d < hd; d++) {
                    kc[((size_t)h * max_ctx + p) * hd + d] = at(0, h, p, d);
                    vc[((size_t)h * max_ctx + p) * hd + d] = at(1, h, p, d);
                }
    }
};
