//! The dot products: every SIMD level against the scalar path and all of them against an f64
//! dot of the dequantized operands, on random blocks (deterministic RNG) and golden blocks.
//!
//! Tolerances. The integer parts of every kernel are exact (i32 sums of ≤ 256 products of
//! |w| ≤ 128 and |a| ≤ 127). What remains is f32 rounding: each 32-value term gets ≤ 3
//! roundings (scale products, the add), the terms are summed sequentially in at most
//! 2*chunks steps, then a short horizontal sum. With u = 2^-24 and MAG = Σ (|w_i| + 2|o_i|)|a_i|
//! (o_i = the block's offset/min part, which kernels apply separately, so the partial sums can
//! be that large), |kernel - exact| ≤ (2*chunks + 8)·u·MAG, and the dequantized reference
//! carries ≤ 3u·MAG of its own. We allow (2*chunks + 16)·2u·MAG for both comparisons.
//! Against the unquantized f32 activations x add the 8-bit rounding: |x_i - d*q_i| ≤ d/2, so
//! |Σ w_i x_i - Σ w_i x̂_i| ≤ Σ |w_i|·d_b/2.

use half::f16;
use llorch::quant::{
    dequantize, has_kernel, quantize_q8, supported_for_dot, vec_dot, vec_dot_at, vec_dot_f32,
    vec_dot_f32_at, vec_dot_multi, vec_dot_multi_at, BlockQ8, GgmlType, SimdLevel,
};

mod common;

pub struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Byte offsets of the f16 scale fields of each block type.
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    use GgmlType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 => &[0],
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
        Q2_K => &[80, 82],
        Q3_K => &[108],
        Q6_K => &[208],
        _ => &[],
    }
}

/// Byte range of the quant bits (zeroed to find the offset part o_i of each value).
fn quant_bytes(ty: GgmlType) -> std::ops::Range<usize> {
    use GgmlType::*;
    match ty {
        Q4_0 => 2..18,
        Q4_1 => 4..20,
        Q5_0 => 2..22,
        Q5_1 => 4..24,
        Q8_0 => 2..34,
        Q2_K => 16..80,
        Q3_K => 0..96,
        Q4_K => 16..144,
        Q5_K => 16..176,
        Q6_K => 0..192,
        MXFP4 => 1..17,
        _ => 0..0,
    }
}

/// Random bytes with sane scales (|d| in [1e-3, 1e-1], either sign).
pub fn random_row(ty: GgmlType, n_values: usize, rng: &mut Rng) -> Vec<u8> {
    let nb = n_values / ty.block_size();
    let ts = ty.type_size();
    let mut row: Vec<u8> = (0..nb * ts).map(|_| rng.next() as u8).collect();
    for b in row.chunks_exact_mut(ts) {
        for &at in f16_fields(ty) {
            let v =
                (0.001 + 0.099 * rng.unit().abs()) * if rng.next() & 1 == 0 { 1.0 } else { -1.0 };
            b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        }
        if ty == GgmlType::MXFP4 {
            b[0] = 110 + (rng.next() % 30) as u8;
        }
    }
    row
}

pub struct Check {
    pub exact: f64,   // Σ w·x̂ in f64 (x̂ the 8-bit activations)
    pub exact_x: f64, // Σ w·x in f64
    pub tol: f64,     // f32 summation tolerance (see the top of the file)
    pub tol_x: f64,   // plus the 8-bit rounding of the activations
}

pub fn reference(ty: GgmlType, row: &[u8], x: &[f32], acts: &[BlockQ8]) -> Check {
    let n = x.len();
    let mut w = vec![0.0f32; n];
    dequantize(ty, row, &mut w).unwrap();
    let mut zeroed = row.to_vec();
    let (bs, ts) = (ty.block_size(), ty.type_size());
    for b in zeroed.chunks_exact_mut(ts) {
        b[quant_bytes(ty)].fill(0);
    }
    let mut o = vec![0.0f32; n];
    dequantize(ty, &zeroed, &mut o).unwrap();
    let _ = bs;
    let (mut exact, mut exact_x, mut mag, mut round) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for i in 0..n {
        let b = &acts[i / 32];
        let xa = b.d as f64 * b.qs[i % 32] as f64;
        exact += w[i] as f64 * xa;
        exact_x += w[i] as f64 * x[i] as f64;
        mag += (w[i].abs() as f64 + 2.0 * o[i].abs() as f64) * xa.abs();
        round += w[i].abs() as f64 * b.d as f64 / 2.0;
    }
    let chunks = (n / 32) as f64;
    let tol = (2.0 * chunks + 16.0) * 2.0 * 2f64.powi(-24) * mag + 1e-30;
    Check {
        exact,
        exact_x,
        tol,
        tol_x: tol + round * (1.0 + 1e-6),
    }
}

/// Checks every weight block of `row` on its own at every level: with one block the tolerance
/// is a few u relative to that block's magnitude, so even one wrongly decoded value (about
/// 1/32..1/256 of the block's magnitude) cannot hide in the long-row tolerance.
fn per_block(ty: GgmlType, row: &[u8], x: &[f32], acts: &[BlockQ8], levels: &[SimdLevel]) {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    for (k, wb) in row.chunks_exact(ts).enumerate() {
        let (xs, ab) = (
            &x[k * bs..(k + 1) * bs],
            &acts[k * bs / 32..(k + 1) * bs / 32],
        );
        let c = reference(ty, wb, xs, ab);
        for &l in levels {
            let got = vec_dot_at(l, ty, wb, ab) as f64;
            assert!(
                (got - c.exact).abs() <= c.tol,
                "{} block {k} {l:?}: {got} vs {} (tol {:e})",
                ty.name(),
                c.exact,
                c.tol
            );
        }
    }
}

fn random_acts(n: usize, rng: &mut Rng) -> (Vec<f32>, Vec<BlockQ8>) {
    // Mixed magnitudes per block, as activations have.
    let x: Vec<f32> = (0..n)
        .map(|i| rng.unit() * if (i / 32) % 3 == 0 { 10.0 } else { 0.5 })
        .collect();
    let mut a = vec![BlockQ8::default(); n / 32];
    quantize_q8(&x, &mut a);
    (x, a)
}

pub const DOT_TYPES: [GgmlType; 11] = {
    use GgmlType::*;
    [
        Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, MXFP4,
    ]
};

fn levels() -> Vec<SimdLevel> {
    let l: Vec<_> = SimdLevel::ALL
        .into_iter()
        .filter(|l| l.available())
        .collect();
    eprintln!("levels: {:?}", l);
    l
}

#[test]
fn quantize_q8_rounds_to_nearest() {
    let mut rng = Rng(1);
    let (x, a) = random_acts(32 * 64, &mut rng);
    for (xb, b) in x.chunks(32).zip(&a) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!((b.d - amax / 127.0).abs() <= amax * 1e-7);
        let mut sum = 0i32;
        for (v, q) in xb.iter().zip(b.qs) {
            // |x - d q| <= d/2, plus one f32 rounding of x/d.
            assert!(
                (v - b.d * q as f32).abs() <= b.d * (0.5 + 1e-5),
                "{v} vs {q}*{}",
                b.d
            );
            sum += q as i32;
        }
        assert_eq!(b.s, b.d * sum as f32);
    }
    // Zeros: d = 0, no NaN.
    let mut z = [BlockQ8::default(); 1];
    quantize_q8(&[0.0; 32], &mut z);
    assert_eq!((z[0].d, z[0].s, z[0].qs), (0.0, 0.0, [0; 32]));
}

#[test]
fn every_level_matches_scalar_and_reference() {
    let levels = levels();
    let mut rng = Rng(2024);
    for ty in DOT_TYPES {
        assert!(supported_for_dot(ty), "{}", ty.name());
        for &n in &[256usize, 4864, 896 * 2] {
            if n % ty.block_size() != 0 {
                continue;
            }
            for _rep in 0..4 {
                let row = random_row(ty, n, &mut rng);
                let (x, acts) = random_acts(n, &mut rng);
                let c = reference(ty, &row, &x, &acts);
                let scalar = vec_dot_at(SimdLevel::Scalar, ty, &row, &acts);
                per_block(ty, &row, &x, &acts, &levels);
                for &l in &levels {
                    let got = vec_dot_at(l, ty, &row, &acts) as f64;
                    assert!(
                        (got - c.exact).abs() <= c.tol,
                        "{} n={n} {l:?}: {got} vs exact {} (tol {:e})",
                        ty.name(),
                        c.exact,
                        c.tol
                    );
                    assert!(
                        (got - c.exact_x).abs() <= c.tol_x,
                        "{} {l:?}: vs f32 acts",
                        ty.name()
                    );
                    // Two implementations, each within tol of the exact value.
                    assert!(
                        (got - scalar as f64).abs() <= 2.0 * c.tol,
                        "{} {l:?} vs scalar",
                        ty.name()
                    );
                }
            }
        }
    }
}

#[test]
fn golden_blocks_dot() {
    let levels = levels();
    let mut rng = Rng(99);
    for ty in DOT_TYPES {
        let path = common::golden_dir().join(format!("quant/{}.blocks", ty.name()));
        let row = std::fs::read(path).unwrap();
        let n = row.len() / ty.type_size() * ty.block_size();
        let (x, acts) = random_acts(n, &mut rng);
        let c = reference(ty, &row, &x, &acts);
        per_block(ty, &row, &x, &acts, &levels);
        for &l in &levels {
            let got = vec_dot_at(l, ty, &row, &acts) as f64;
            eprintln!(
                "{} {l:?}: exact {:.6e} err {:.2e} tol {:.2e} (tol/|exact| {:.1e})",
                ty.name(),
                c.exact,
                (got - c.exact).abs(),
                c.tol,
                c.tol / c.exact.abs()
            );
            assert!(
                (got - c.exact).abs() <= c.tol,
                "{} {l:?}: {got} vs {}",
                ty.name(),
                c.exact
            );
        }
    }
}

#[test]
fn multi_matches_single() {
    let levels = levels();
    let mut rng = Rng(5);
    for ty in DOT_TYPES {
        let n = 1024;
        let row = random_row(ty, n, &mut rng);
        for n_cols in [1usize, 2, 3, 4, 5, 7, 8, 9, 13] {
            let (x, acts) = random_acts(n * n_cols, &mut rng);
            let nb = n / 32;
            for &l in &levels {
                let mut out = vec![f32::NAN; n_cols];
                vec_dot_multi_at(l, ty, &row, &acts, n_cols, &mut out).unwrap();
                for c in 0..n_cols {
                    let col = &acts[c * nb..(c + 1) * nb];
                    let chk = reference(ty, &row, &x[c * n..(c + 1) * n], col);
                    let single = vec_dot_at(l, ty, &row, col);
                    assert!(
                        (out[c] as f64 - chk.exact).abs() <= chk.tol,
                        "{} {l:?} cols={n_cols} col {c}: {} vs {}",
                        ty.name(),
                        out[c],
                        chk.exact
                    );
                    // Same kernel arithmetic per column, only register blocking differs.
                    assert!(
                        (out[c] - single).abs() as f64 <= 2.0 * chk.tol,
                        "{} {l:?} multi vs single",
                        ty.name()
                    );
                }
            }
            let mut out = vec![0.0; n_cols];
            vec_dot_multi(ty, &row, &acts, n_cols, &mut out);
            assert!(out.iter().all(|v| v.is_finite()));
        }
    }
}

#[test]
fn forced_level_env_is_honoured() {
    // The process-wide level is decided once; child processes check what LLORCH_SIMD picks.
    if let Ok(want) = std::env::var("QUANT_DOT_CHILD") {
        assert_eq!(llorch::quant::simd_level().name(), want);
        return;
    }
    let mut cases = vec!["scalar"];
    if SimdLevel::Neon.available() {
        cases.push("neon"); // the plain path even where dotprod exists
    }
    let exe = std::env::current_exe().unwrap();
    for level in cases {
        // Under an emulator (scripts/test-aarch64) the child must run through it too.
        let mut cmd = match std::env::var_os("LLORCH_TEST_RUNNER") {
            Some(runner) => {
                let mut c = std::process::Command::new(runner);
                c.arg(&exe);
                c
            }
            None => std::process::Command::new(&exe),
        };
        let out = cmd
            .args(["forced_level_env_is_honoured", "--exact", "--nocapture"])
            .env("QUANT_DOT_CHILD", level)
            .env("LLORCH_SIMD", level)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "LLORCH_SIMD={level}: {text}");
        assert!(text.contains("1 passed"), "LLORCH_SIMD={level}: {text}");
    }
}

/// Run-time detection on AArch64: plain NEON always, the dotprod level exactly when the CPU
/// has it, and the best one by default. scripts/test-aarch64 runs this on emulated CPUs with
/// and without dotprod and says which in LLORCH_EXPECT_DOTPROD.
#[cfg(target_arch = "aarch64")]
#[test]
fn aarch64_levels_detected() {
    assert!(SimdLevel::Neon.available());
    let dotprod = SimdLevel::NeonDotprod.available();
    eprintln!("dotprod: {dotprod}");
    match std::env::var("LLORCH_EXPECT_DOTPROD").as_deref() {
        Ok("1") => assert!(dotprod, "the CPU has dotprod but it was not detected"),
        Ok("0") => assert!(!dotprod, "dotprod detected on a CPU without it"),
        _ => {}
    }
    if std::env::var_os("LLORCH_SIMD").is_none() {
        let best = if dotprod {
            SimdLevel::NeonDotprod
        } else {
            SimdLevel::Neon
        };
        assert_eq!(llorch::quant::simd_level(), best);
    }
}

/// The NEON levels this CPU runs (on AArch64 at least the plain one; none elsewhere).
fn neon_levels() -> Vec<SimdLevel> {
    let neon: Vec<_> = [SimdLevel::Neon, SimdLevel::NeonDotprod]
        .into_iter()
        .filter(|l| l.available())
        .collect();
    if cfg!(target_arch = "aarch64") {
        assert!(neon.contains(&SimdLevel::Neon), "AArch64 without NEON");
    } else {
        eprintln!("not AArch64: skipped (scripts/test-aarch64 runs it under qemu)");
    }
    neon
}

/// Whether two results are the same float bit for bit (any NaN equals any NaN: payloads are
/// the FPU's business).
fn same_bits(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Activation blocks of every 8-bit value including -128 (which quantize_q8 never makes) and
/// scales of every kind: random, zero, negative, subnormal, infinite.
fn hostile_acts(nb: usize, rng: &mut Rng) -> Vec<BlockQ8> {
    (0..nb)
        .map(|i| {
            let mut qs = [0i8; 32];
            for q in &mut qs {
                *q = rng.next() as i8;
            }
            let d = match i % 7 {
                0 => 0.0,
                1 => -rng.unit(),
                2 => f32::from_bits(1 + (rng.next() % 1000) as u32),
                3 if i % 5 == 0 => f32::INFINITY,
                _ => rng.unit() * 4.0,
            };
            let sum: i32 = qs.iter().map(|&q| q as i32).sum();
            BlockQ8 {
                d,
                s: d * sum as f32,
                qs,
            }
        })
        .collect()
}

/// The NEON levels repeat the scalar arithmetic operation for operation (see
/// src/quant/aarch64.rs), so they must equal it bit for bit, not within a tolerance: every
/// type, 1-9 columns (each also equal to itself computed alone), sane random rows, rows of
/// raw random bytes (NaN and infinite f16 scales, all bit patterns), hostile activations,
/// and the golden blocks.
#[test]
fn neon_equals_scalar_bit_for_bit() {
    let neon = neon_levels();
    if neon.is_empty() {
        return;
    }
    eprintln!("levels: {neon:?}");
    for &l in &neon {
        for ty in DOT_TYPES {
            assert!(has_kernel(l, ty), "{l:?} has no kernel for {}", ty.name());
        }
    }
    let mut rng = Rng(0xA64);
    let mut checked = 0usize;
    let mut check = |ty: GgmlType, row: &[u8], acts: &[BlockQ8], n_cols: usize, what: &str| {
        let mut want = vec![0f32; n_cols];
        vec_dot_multi_at(SimdLevel::Scalar, ty, row, acts, n_cols, &mut want).unwrap();
        for &l in &neon {
            let mut got = vec![0f32; n_cols];
            vec_dot_multi_at(l, ty, row, acts, n_cols, &mut got).unwrap();
            for c in 0..n_cols {
                assert!(
                    same_bits(got[c], want[c]),
                    "{} {l:?} {what} cols={n_cols} col {c}: {:e} ({:#x}) vs scalar {:e} ({:#x})",
                    ty.name(),
                    got[c],
                    got[c].to_bits(),
                    want[c],
                    want[c].to_bits()
                );
                // A column's result does not depend on its neighbours (batched decoding
                // relies on it): the same bits as that column alone.
                let nb = acts.len() / n_cols;
                let alone = vec_dot_at(l, ty, row, &acts[c * nb..(c + 1) * nb]);
                assert!(
                    same_bits(got[c], alone),
                    "{} {l:?} {what} cols={n_cols} col {c}: {:e} vs alone {:e}",
                    ty.name(),
                    got[c],
                    alone
                );
                checked += 1;
            }
        }
    };
    for ty in DOT_TYPES {
        for n in [256usize, 4864] {
            if n % ty.block_size() != 0 {
                continue;
            }
            for n_cols in [1usize, 2, 3, 4, 5, 9] {
                let row = random_row(ty, n, &mut rng);
                let (_, acts) = random_acts(n * n_cols, &mut rng);
                check(ty, &row, &acts, n_cols, "random");
                let raw: Vec<u8> = (0..row.len()).map(|_| rng.next() as u8).collect();
                let hostile = hostile_acts(n / 32 * n_cols, &mut rng);
                check(ty, &raw, &hostile, n_cols, "raw bytes, hostile acts");
                check(ty, &row, &hostile, n_cols, "hostile acts");
            }
        }
        let golden =
            std::fs::read(common::golden_dir().join(format!("quant/{}.blocks", ty.name())))
                .unwrap();
        let n = golden.len() / ty.type_size() * ty.block_size();
        let (_, acts) = random_acts(2 * n, &mut rng);
        check(ty, &golden, &acts, 2, "golden");
    }
    eprintln!("{checked} results equal bit for bit");
    assert!(checked > 1000);
}

/// The NEON F32/F16/BF16 row dot repeats the scalar one's eight partial sums, so it must
/// equal it bit for bit: lengths around the 8-value chunks, sane values and raw bit patterns
/// (f16/bf16 subnormals, infinities, NaN).
#[test]
fn neon_f32_rows_equal_scalar_bit_for_bit() {
    let neon = neon_levels();
    if neon.is_empty() {
        return;
    }
    let mut rng = Rng(0xF32);
    let mut checked = 0usize;
    for n in [1usize, 7, 8, 9, 16, 100, 896, 1003] {
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
            let ts = ty.type_size();
            let x: Vec<f32> = (0..n).map(|_| rng.unit() * 3.0).collect();
            let sane: Vec<u8> = (0..n)
                .flat_map(|_| {
                    let v = rng.unit();
                    match ty {
                        GgmlType::F32 => v.to_le_bytes().to_vec(),
                        GgmlType::F16 => f16::from_f32(v).to_le_bytes().to_vec(),
                        _ => half::bf16::from_f32(v).to_le_bytes().to_vec(),
                    }
                })
                .collect();
            let raw: Vec<u8> = (0..n * ts).map(|_| rng.next() as u8).collect();
            for row in [&sane, &raw] {
                let want = vec_dot_f32_at(SimdLevel::Scalar, ty, row, &x);
                for &l in &neon {
                    let got = vec_dot_f32_at(l, ty, row, &x);
                    assert!(
                        same_bits(got, want),
                        "{ty:?} n={n} {l:?}: {got:e} ({:#x}) vs scalar {want:e} ({:#x})",
                        got.to_bits(),
                        want.to_bits()
                    );
                    checked += 1;
                }
            }
        }
    }
    eprintln!("{checked} results equal bit for bit");
}

#[test]
fn f32_rows() {
    let mut rng = Rng(3);
    for n in [1usize, 7, 16, 100, 896] {
        let x: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
        let w: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
            let (row, wq): (Vec<u8>, Vec<f32>) = match ty {
                GgmlType::F32 => (w.iter().flat_map(|v| v.to_le_bytes()).collect(), w.clone()),
                GgmlType::F16 => (
                    w.iter()
                        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                        .collect(),
                    w.iter().map(|v| f16::from_f32(*v).to_f32()).collect(),
                ),
                _ => (
                    w.iter()
                        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                        .collect(),
                    w.iter()
                        .map(|v| half::bf16::from_f32(*v).to_f32())
                        .collect(),
                ),
            };
            let exact: f64 = wq.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
            let mag: f64 = wq
                .iter()
                .zip(&x)
                .map(|(a, b)| (*a as f64 * *b as f64).abs())
                .sum();
            let got = vec_dot_f32(ty, &row, &x) as f64;
            // n sequential f32 adds at most (plus the product rounding): (n+2)u·Σ|w x|.
            assert!(
                (got - exact).abs() <= (n as f64 + 2.0) * 2f64.powi(-24) * mag,
                "{ty:?} n={n}"
            );
        }
    }
    assert!(vec_dot_f32(GgmlType::F32, &[0; 8], &[1.0]).is_nan());
    assert!(vec_dot_f32(GgmlType::Q8_0, &[0; 34], &[1.0; 32]).is_nan());
}

#[test]
fn bad_sizes_give_nan_not_panic() {
    let acts = vec![BlockQ8::default(); 8];
    assert!(vec_dot(GgmlType::Q4_K, &[0u8; 143], &acts).is_nan());
    assert!(vec_dot(GgmlType::Q4_K, &[0u8; 144], &acts[..7]).is_nan());
    assert!(vec_dot(GgmlType::Q8_K, &[0u8; 292], &acts).is_nan());
    assert!(vec_dot(GgmlType::F32, &[0u8; 1024], &acts).is_nan());
    assert_eq!(vec_dot(GgmlType::Q4_K, &[0u8; 144], &acts), 0.0);
    let mut out = [0.0f32; 3];
    vec_dot_multi(GgmlType::Q8_0, &[0u8; 34], &acts, 3, &mut out);
    assert!(out.iter().all(|v| v.is_nan()));
    let e = vec_dot_multi_at(
        SimdLevel::Scalar,
        GgmlType::Q8_0,
        &[0u8; 34],
        &acts,
        0,
        &mut [],
    );
    assert!(e.is_err());
}

/// An MXFP4 row of `nb` blocks with exponents in `exps` and random codes, and its values as
/// exact integers in units of 2^-unit (value = MXFP4 code value · 2^(e-127); the doubled code
/// table times 2^(e-128)).
fn mxfp4_row(nb: usize, exps: std::ops::RangeInclusive<u8>, rng: &mut Rng) -> (Vec<u8>, Vec<i64>) {
    const DOUBLED: [i64; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];
    let (lo, span) = (*exps.start(), (exps.end() - exps.start()) as u64 + 1);
    let mut row = Vec::with_capacity(nb * 17);
    let mut vals = Vec::with_capacity(nb * 32);
    for _ in 0..nb {
        let e = lo + (rng.next() % span) as u8;
        let qs: Vec<u8> = (0..16).map(|_| rng.next() as u8).collect();
        row.push(e);
        row.extend(&qs);
        // Integer value in units of 2^(lo - 128): doubled code << (e - lo).
        let shift = e - lo;
        for half in 0..2 {
            for &q in &qs {
                let code = if half == 0 { q & 15 } else { q >> 4 };
                vals.push(DOUBLED[code as usize] << shift);
            }
        }
    }
    (row, vals)
}

/// MXFP4 scales are powers of two, so with power-of-two activation scales every product and
/// partial sum of every kernel is exact in f32 as long as the row's total stays below 2^24
/// units of its smallest scale: then every SIMD level, the scalar path and the exact integer
/// dot must agree bit for bit (not within a tolerance). Here: exponents 126..=130 (weight
/// scales 2^-2..2^2 relative to 2^-2), activation d = 2^-7, |q| <= 127: a block contributes
/// at most 32·12·127·2^4 = 780,288 units of 2^-9, and 16 blocks stay below 2^24.
#[test]
fn mxfp4_dot_is_exact_integer_arithmetic() {
    let levels = levels();
    let mut rng = Rng(0x4D58);
    let ad = 2f32.powi(-7);
    for nb in [1usize, 2, 5, 16] {
        for n_cols in [1usize, 2, 3, 4, 8, 9] {
            let (row, vals) = mxfp4_row(nb, 126..=130, &mut rng);
            let acts: Vec<BlockQ8> = (0..n_cols * nb)
                .map(|_| {
                    let mut qs = [0i8; 32];
                    for q in &mut qs {
                        *q = ((rng.next() % 255) as i32 - 127) as i8;
                    }
                    let sum: i32 = qs.iter().map(|&q| q as i32).sum();
                    BlockQ8 {
                        d: ad,
                        s: ad * sum as f32,
                        qs,
                    }
                })
                .collect();
            for c in 0..n_cols {
                let col = &acts[c * nb..(c + 1) * nb];
                let units: i64 = vals
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| v * col[i / 32].qs[i % 32] as i64)
                    .sum();
                assert!(units.abs() < 1 << 24);
                // Units of 2^(126-128) · 2^-7.
                let exact = units as f32 * 2f32.powi(-9);
                for &l in &levels {
                    let mut out = vec![f32::NAN; n_cols];
                    vec_dot_multi_at(l, GgmlType::MXFP4, &row, &acts, n_cols, &mut out).unwrap();
                    assert_eq!(
                        out[c].to_bits(),
                        exact.to_bits(),
                        "{l:?} nb={nb} cols={n_cols} col {c}: {} vs {exact}",
                        out[c]
                    );
                }
            }
        }
    }
}

/// The wide (16-bit activation) kernels on MXFP4 rows, exactly: activations Y·2^-10 with one
/// |Y| = 32767 per block make each block's 16-bit scale exactly 2^-10 and every Y exact; the
/// other |Y| <= 255 keep a block's Σ|Y·w| below 32767·12 + 31·255·12 < 2^19, and exponents
/// 127..=128 with 8 blocks keep a row below 2^23 units of the smallest scale: every vpdpbusd /
/// vpdpwssd sum, scale product and accumulation is exact, so decode (1-4 columns) and prompt
/// (more) layouts must equal the integer dot bit for bit.
/// `n` columns of `k` activations quantized for the wide kernels.
#[cfg(target_arch = "x86_64")]
fn acts16(x: &[f32], k: usize, n: usize) -> llorch::quant::Acts16 {
    let mut acts = llorch::quant::Acts16::new();
    acts.reset(k, n);
    for (p, xs) in acts.parts_mut().zip(x.chunks(k)) {
        llorch::quant::quantize_column(xs, p);
    }
    acts
}

#[cfg(target_arch = "x86_64")]
#[test]
fn mxfp4_wide_is_exact_integer_arithmetic() {
    use llorch::quant::{wide_matmul, wide_supported};
    let k = 256;
    if !wide_supported(GgmlType::MXFP4, k) {
        eprintln!("no AVX-512 VNNI: skipped");
        return;
    }
    let mut rng = Rng(0x4D59);
    let rows = 9;
    let mut row = Vec::new();
    let mut vals = Vec::new();
    for _ in 0..rows {
        let (r, v) = mxfp4_row(k / 32, 127..=128, &mut rng);
        row.extend(r);
        vals.extend(v);
    }
    for n in [1usize, 2, 3, 4, 5, 8, 13] {
        let ys: Vec<i64> = (0..n * k)
            .map(|i| {
                if i % 32 == (i / 32) % 32 {
                    if rng.next() & 1 == 0 {
                        32767
                    } else {
                        -32767
                    }
                } else {
                    (rng.next() % 511) as i64 - 255
                }
            })
            .collect();
        let x: Vec<f32> = ys.iter().map(|&y| y as f32 * 2f32.powi(-10)).collect();
        let acts = acts16(&x, k, n);
        let mut out = vec![f32::NAN; rows * n];
        wide_matmul(GgmlType::MXFP4, &row, k / 32 * 17, &acts, &mut out);
        for r in 0..rows {
            for t in 0..n {
                let units: i64 = (0..k).map(|i| vals[r * k + i] * ys[t * k + i]).sum();
                assert!(units.abs() < 1 << 24);
                // Units of 2^(127-128) · 2^-10.
                let exact = units as f32 * 2f32.powi(-11);
                assert_eq!(
                    out[r * n + t].to_bits(),
                    exact.to_bits(),
                    "n={n} row {r} col {t}: {} vs {exact}",
                    out[r * n + t]
                );
            }
        }
    }
}

/// The reference reader's golden MXFP4 blocks through the wide kernels (4 rows of 512 values,
/// 1-7 columns: the decode and prompt layouts) against an f64 dot of their golden-exact
/// dequantized values with the unquantized activations. Bound as the wide kernels' own test
/// (src/quant/dot.rs): each activation is off by at most max|x_block|/65534 after the 16-bit
/// quantization, plus f32 rounding of the sums (1e-5 of Σ|w·x| covers ~1000 additions).
#[cfg(target_arch = "x86_64")]
#[test]
fn mxfp4_golden_blocks_wide() {
    use llorch::quant::{wide_matmul, wide_supported};
    let k = 512;
    if !wide_supported(GgmlType::MXFP4, k) {
        eprintln!("no AVX-512 VNNI: skipped");
        return;
    }
    let row = std::fs::read(common::golden_dir().join("quant/MXFP4.blocks")).unwrap();
    let rows = row.len() / 17 * 32 / k;
    let mut w = vec![0f32; rows * k];
    dequantize(GgmlType::MXFP4, &row, &mut w).unwrap();
    let mut rng = Rng(0x601D);
    for n in [1usize, 3, 7] {
        let (x, _) = random_acts(n * k, &mut rng);
        let acts = acts16(&x, k, n);
        let mut out = vec![f32::NAN; rows * n];
        wide_matmul(GgmlType::MXFP4, &row, k / 32 * 17, &acts, &mut out);
        for r in 0..rows {
            for t in 0..n {
                let (wr, xs) = (&w[r * k..(r + 1) * k], &x[t * k..(t + 1) * k]);
                let exact: f64 = wr.iter().zip(xs).map(|(&a, &b)| a as f64 * b as f64).sum();
                let (mut bound, mut mag) = (0f64, 0f64);
                for (wb, xb) in wr.chunks(32).zip(xs.chunks(32)) {
                    let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                    bound += wb.iter().map(|v| v.abs() as f64).sum::<f64>() * amax / 65534.0;
                    mag += wb
                        .iter()
                        .zip(xb)
                        .map(|(&a, &b)| (a as f64 * b as f64).abs())
                        .sum::<f64>();
                }
                let got = out[r * n + t] as f64;
                let tol = bound * 1.001 + mag * 1e-5;
                assert!(
                    (got - exact).abs() <= tol,
                    "n={n} row {r} col {t}: {got} vs {exact} (tol {tol:e})"
                );
            }
        }
    }
}

/// Column invariance of the wide kernels, which batched decoding and the prefix cache rely
/// on (`quant::WIDE_INVARIANT_COLS`): column t of a product of up to that many columns (here
/// up to 20: the decode kernel's counts and the prompt tile's beyond) equals the same column
/// alone, bit for bit, for every type, on rows with a last half chunk (k = 1088) too.
#[cfg(target_arch = "x86_64")]
#[test]
fn wide_columns_are_batch_invariant() {
    use llorch::quant::{wide_matmul, wide_supported, WIDE_INVARIANT_COLS};
    let mut rng = Rng(0xBA7C);
    if !wide_supported(GgmlType::Q8_0, 1024) {
        eprintln!("no AVX-512 VNNI: skipped");
        return;
    }
    for (ty, k) in DOT_TYPES.into_iter().flat_map(|t| [(t, 1024), (t, 1088)]) {
        if !wide_supported(ty, k) {
            continue;
        }
        let rows = 8;
        let w: Vec<u8> = (0..rows)
            .flat_map(|_| random_row(ty, k, &mut rng))
            .collect();
        let rb = w.len() / rows;
        // WIDE_INVARIANT_COLS is every count here; 20 covers both kernels.
        assert_eq!(WIDE_INVARIANT_COLS, usize::MAX);
        let most = 20;
        let x: Vec<f32> = (0..most * k).map(|_| rng.unit()).collect();
        let product = |x: &[f32], n: usize| {
            let mut o = vec![0f32; rows * n];
            wide_matmul(ty, &w, rb, &acts16(x, k, n), &mut o);
            o
        };
        let alone: Vec<Vec<f32>> = (0..most)
            .map(|t| product(&x[t * k..(t + 1) * k], 1))
            .collect();
        for n in 2..=most {
            let o = product(&x[..n * k], n);
            for r in 0..rows {
                for (t, a) in alone.iter().enumerate().take(n) {
                    assert_eq!(
                        o[r * n + t].to_bits(),
                        a[r].to_bits(),
                        "{}: row {r}, column {t} of {n} differs from the column alone",
                        ty.name()
                    );
                }
            }
        }
    }
}
