//! Dot-product throughput on the real Qwen2.5 0.5B shapes (and GPT-OSS's MXFP4 experts),
//! single thread, per SIMD level.
//! Run: `cargo bench --bench quant` (optionally `-- Q4_K` to filter types).
//! GB/s counts weight bytes read; GFLOP/s counts 2 flops per weight × activation pair.

use llorch::quant::{
    quantize_q8, vec_dot_at, vec_dot_multi_at, wide_matmul, wide_supported, Acts16, BlockQ8,
    GgmlType, SimdLevel,
};
use std::hint::black_box;

fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Random blocks with sane f16 scale fields.
fn weights(ty: GgmlType, rows: usize, cols: usize, seed: &mut u64) -> Vec<u8> {
    let ts = ty.type_size();
    let mut w: Vec<u8> = (0..rows * cols / ty.block_size() * ts)
        .map(|_| rng(seed) as u8)
        .collect();
    let fields: &[usize] = match ty {
        GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[0],
    };
    for b in w.chunks_exact_mut(ts) {
        if ty == GgmlType::MXFP4 {
            b[0] = 120; // E8M0 exponent: scale 2^-7
            continue;
        }
        for &at in fields {
            b[at..at + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        }
    }
    w
}

/// This thread's CPU time in seconds: on a shared machine, time spent descheduled while
/// other processes run does not count (wall time swings 2x with the load).
fn cpu_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Best-of-5 seconds (thread CPU time) per call of `f`, each timing at least ~0.2 s.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let (mut n, t0) = (0u32, cpu_now());
        while n == 0 || cpu_now() - t0 < 0.2 {
            f();
            n += 1;
        }
        best = best.min((cpu_now() - t0) / n as f64);
    }
    best
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let shapes = [
        (GgmlType::Q4_K, 896, 4864, "ffn_down"),
        (GgmlType::Q6_K, 896, 4864, "ffn_down"),
        (GgmlType::Q5_0, 4864, 896, "ffn_gate/up"),
        (GgmlType::Q4_1, 1536, 576, "smollm2 ffn"),
        (GgmlType::Q8_0, 151936, 896, "output"),
        // GPT-OSS 20B's expert matrices (2880 x 2880): MXFP4 as shipped, Q4_0 to compare.
        (GgmlType::Q4_0, 2880, 2880, "gpt-oss expert"),
        (GgmlType::MXFP4, 2880, 2880, "gpt-oss expert"),
    ];
    const COLS: usize = 16; // prompt tokens per vec_dot_multi call
    let mut seed = 0x1234_5678_9abc_def1u64;
    println!(
        "{:<6} {:>13} {:<10} {:>12} {:>10} {:>12} {:>13}",
        "type", "rows x cols", "level", "vec_dot GB/s", "GFLOP/s", "multi GFLOP/s", "multi GB/s eq"
    );
    for (ty, rows, cols, what) in shapes {
        if !filter.is_empty() && !filter.iter().any(|f| ty.name().contains(f.as_str())) {
            continue;
        }
        let w = weights(ty, rows, cols, &mut seed);
        let row_bytes = w.len() / rows;
        let x: Vec<f32> = (0..cols * COLS)
            .map(|_| (rng(&mut seed) >> 40) as f32 / 8e6 - 1.0)
            .collect();
        let mut acts = vec![BlockQ8::default(); cols * COLS / 32];
        quantize_q8(&x, &mut acts);
        let one = &acts[..cols / 32];
        // LLORCH_BENCH_LEVEL=avx512 (etc.) measures one level only.
        let only = std::env::var("LLORCH_BENCH_LEVEL").ok();
        for level in SimdLevel::ALL
            .into_iter()
            .filter(|l| l.available() && only.as_deref().map_or(true, |o| o == l.name()))
        {
            let t1 = time(|| {
                let mut s = 0.0;
                for r in w.chunks_exact(row_bytes) {
                    s += vec_dot_at(level, ty, r, black_box(one));
                }
                black_box(s);
            });
            // The Q8_0 output matrix is large: prompt timing on a slice of its rows.
            let mrows = rows.min(8192);
            let mut out = [0.0f32; COLS];
            let tm = time(|| {
                for r in w[..mrows * row_bytes].chunks_exact(row_bytes) {
                    vec_dot_multi_at(level, ty, r, black_box(&acts), COLS, &mut out).unwrap();
                    black_box(&out);
                }
            });
            let flops = 2.0 * (rows * cols) as f64;
            let mflops = 2.0 * (mrows * cols * COLS) as f64;
            println!(
                "{:<6} {:>6}x{:<6} {:<10} {:>12.2} {:>10.2} {:>12.2} {:>13.2}   ({what})",
                ty.name(),
                rows,
                cols,
                level.name(),
                w.len() as f64 / t1 / 1e9,
                flops / t1 / 1e9,
                mflops / tm / 1e9,
                (mrows * row_bytes * COLS) as f64 / tm / 1e9,
            );
        }
        // The wide kernels (16-bit activations): decode (1 column) and prompt (64 columns).
        if wide_supported(ty, cols) {
            let mrows = rows.min(8192);
            // LLORCH_BENCH_WIDE_N=8 (etc.) measures one column count only.
            let ns: Vec<usize> = match std::env::var("LLORCH_BENCH_WIDE_N") {
                Ok(v) => v.split(',').filter_map(|n| n.parse().ok()).collect(),
                Err(_) => vec![1, 8, 64],
            };
            for n in ns {
                let x: Vec<f32> = (0..cols * n)
                    .map(|_| (rng(&mut seed) >> 40) as f32 / 8e6 - 1.0)
                    .collect();
                let mut a = Acts16::new();
                a.reset(cols, n);
                for (p, xs) in a.parts_mut().zip(x.chunks(cols)) {
                    llorch::quant::quantize_column(xs, p);
                }
                let r = if n == 1 { rows } else { mrows };
                let mut out = vec![0f32; r * n];
                let t = time(|| {
                    wide_matmul(ty, &w[..r * row_bytes], row_bytes, black_box(&a), &mut out);
                    black_box(&out);
                });
                println!(
                    "{:<6} {:>6}x{:<6} wide n={:<3} {:>8.2} GB/s {:>8.2} GFLOP/s (16-bit acts)",
                    ty.name(),
                    rows,
                    cols,
                    n,
                    (r * row_bytes) as f64 / t / 1e9,
                    2.0 * (r * cols * n) as f64 / t / 1e9,
                );
            }
        }
    }
}
