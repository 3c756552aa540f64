//! The real models: every tensor dequantizes to finite values, and real weight rows dot
//! correctly at every SIMD level.

mod common;

use llorch::gguf::Gguf;
use llorch::quant::{
    dequantize, quantize_q8, supported_for_dot, vec_dot_at, vec_dot_multi_at, BlockQ8, SimdLevel,
};

fn open(name: &str) -> Gguf {
    Gguf::open(&common::model_path(name)).unwrap()
}

#[test]
fn every_tensor_dequantizes_to_finite_values() {
    for model in [
        common::QWEN_05B,
        common::SMOLLM2,
        common::GEMMA3,
        common::QWEN_15B,
    ] {
        let g = open(model);
        let ts = g.tensors();
        let mut buf = vec![0.0f32; 1 << 16];
        let (mut n_values, mut types) = (0u64, std::collections::BTreeSet::new());
        for t in ts {
            let data = g.tensor_data(t);
            let (bs, tsz) = (t.ty.block_size(), t.ty.type_size());
            // 65536 values at a time (a whole number of blocks of every type).
            let per = (1usize << 16) / bs * tsz;
            let mut sumsq = 0.0f64;
            for chunk in data.chunks(per) {
                let n = chunk.len() / tsz * bs;
                dequantize(t.ty, chunk, &mut buf[..n])
                    .unwrap_or_else(|e| panic!("{}: {e}", t.name));
                if let Some(i) = buf[..n].iter().position(|v| !v.is_finite()) {
                    panic!("{model} {}: value {i} is {}", t.name, buf[i]);
                }
                sumsq += buf[..n].iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
            }
            // A real weight tensor is not all zeros.
            assert!(sumsq > 0.0, "{model} {}: all zero", t.name);
            n_values += t.dims.iter().product::<u64>();
            types.insert(t.ty.name());
        }
        eprintln!(
            "{model}: {} tensors, {n_values} values, types {types:?}",
            ts.len()
        );
        assert!(ts.len() > 100);
    }
}

#[test]
fn real_rows_dot_at_every_level() {
    let levels: Vec<_> = SimdLevel::ALL
        .into_iter()
        .filter(|l| l.available())
        .collect();
    let mut seed = 17u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut checked = std::collections::BTreeMap::new();
    for model in [common::QWEN_05B, common::SMOLLM2, common::GEMMA3] {
        let g = open(model);
        for t in g.tensors() {
            if t.dims.len() != 2
                || !supported_for_dot(t.ty)
                || !t.name.starts_with("blk.1.") && !t.name.contains("output.")
            {
                continue;
            }
            let k = t.dims[0] as usize;
            let row_bytes = t.ty.bytes_for(k as u64).unwrap() as usize;
            let n_rows = t.dims[1] as usize;
            let x: Vec<f32> = (0..k * 3).map(|_| rnd()).collect();
            let mut acts = vec![BlockQ8::default(); k * 3 / 32];
            quantize_q8(&x, &mut acts);
            let one = &acts[..k / 32];
            for r in [0, n_rows / 2, n_rows - 1] {
                let row = &g.tensor_data(t)[r * row_bytes..(r + 1) * row_bytes];
                let mut w = vec![0.0f32; k];
                dequantize(t.ty, row, &mut w).unwrap();
                let exact: f64 = (0..k)
                    .map(|i| w[i] as f64 * one[i / 32].d as f64 * one[i / 32].qs[i % 32] as f64)
                    .sum();
                // Real weights have small offsets relative to |w| in practice; bound with a
                // conservative magnitude: Σ (|w| + max|w| of the row)·|x̂| (offset parts are at
                // most the row's largest |w| for these formats) and the long-row factor.
                let wmax = w.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
                let mag: f64 = (0..k)
                    .map(|i| {
                        (w[i].abs() as f64 + 2.0 * wmax)
                            * (one[i / 32].d * one[i / 32].qs[i % 32] as f32).abs() as f64
                    })
                    .sum();
                let tol = (2.0 * (k / 32) as f64 + 16.0) * 2.0 * 2f64.powi(-24) * mag;
                for &l in &levels {
                    let got = vec_dot_at(l, t.ty, row, one) as f64;
                    assert!(
                        (got - exact).abs() <= tol,
                        "{model} {} row {r} {l:?}: {got} vs {exact} tol {tol:e}",
                        t.name
                    );
                    let mut out = [0.0f32; 3];
                    vec_dot_multi_at(l, t.ty, row, &acts, 3, &mut out).unwrap();
                    assert!(
                        (out[0] as f64 - got).abs() <= 2.0 * tol,
                        "{model} {} multi",
                        t.name
                    );
                }
            }
            *checked.entry(t.ty.name()).or_insert(0) += 1;
        }
    }
    eprintln!("tensors checked per type: {checked:?}");
    for ty in ["Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K"] {
        assert!(checked.contains_key(ty), "no real {ty} tensor checked");
    }
}
