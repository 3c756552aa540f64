// The reference of the attention emulator tests: one query's softmax attention in double.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

// Query `q` (hd f32, multiplied by `scale` in f32 as the kernels do) over keys lo..hi
// inclusive (key(j, d) and val(j, d) in double), with GPT-OSS's sink logit when `sink` is set
// (it joins the max and the denominator, no value): the hd outputs.
template <class Key, class Val>
std::vector<double> attend_ref(const float* q, float scale, int lo, int hi, int hd, Key key, Val val,
                               const float* sink) {
    std::vector<double> sc;
    double mx = sink ? (double)*sink : -INFINITY;
    for (int j = lo; j <= hi; j++) {
        double s = 0;
        for (int d = 0; d < hd; d++) s += (double)(q[d] * scale) * key(j, d);
        sc.push_back(s);
        mx = std::max(mx, s);
    }
    double L = sink ? exp((double)*sink - mx) : 0;
    for (double& s : sc) L += (s = exp(s - mx));
    std::vector<double> o(hd, 0.0);
    for (int j = lo; j <= hi; j++)
        for (int d = 0; d < hd; d++) o[d] += sc[j - lo] / L * val(j, d);
    return o;
}
