//! Every CUDA kernel against a CPU reference, plus the memory manager's budget and OOM answers.
//!
//! Without a GPU (CI) each GPU test prints `skipped: no CUDA device (<reason>)` to stderr (not
//! captured by the test harness) and passes. Inputs are random from fixed per-test seeds;
//! outputs are poisoned (0xFF bytes = NaN) before each launch so an unwritten element fails.
//! Errors are ‖gpu − cpu‖ / ‖cpu‖ against references computed in f64 from the same inputs.
#![cfg(feature = "cuda")]

use half::f16;
use llorch::backend::cuda::{
    gemm_parts, CudaDevice, MemKind, RopeParams, GEMM_TILES, KV_PAGE, MMA_TILES,
};
use llorch::quant::GgmlType;
use llorch::Error;
use std::io::Write;

// ---------- harness ----------

fn device(test: &str) -> Option<CudaDevice> {
    match CudaDevice::open(0, 0) {
        Ok(d) => Some(d),
        Err(Error::NoDevice(why)) => {
            // Straight to fd 2: the harness captures print!/eprint! of passing tests.
            let line = format!("{test}: skipped: no CUDA device ({why})\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            None
        }
        Err(e) => panic!("{test}: opening CUDA device 0 failed with a non-NoDevice error: {e}"),
    }
}

/// splitmix64: small, deterministic, good enough for test data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn rel_err(gpu: &[f32], cpu: &[f64]) -> f64 {
    assert_eq!(gpu.len(), cpu.len());
    let mut num = 0.0;
    let mut den = 0.0;
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        assert!(
            g.is_finite(),
            "element {i} is {g} (unwritten or overflow); reference {c}"
        );
        num += (g as f64 - c) * (g as f64 - c);
        den += c * c;
    }
    (num / den).sqrt()
}

fn check(what: &str, gpu: &[f32], cpu: &[f64], tol: f64) {
    let e = rel_err(gpu, cpu);
    let line = format!("  {what}: rel err {e:.3e} (tol {tol:.0e})\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.0e}");
}

const POISON: u8 = 0xFF; // every f32 becomes NaN

// ---------- GGUF blocks: random data and the CPU dequantization reference ----------
// Layouts as in the `gguf` Python package's quants.py (see kernels/common.cuh).

const TYPES: [GgmlType; 8] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
    GgmlType::MXFP4,
];

fn put_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}
fn get_f16(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Random bytes for `rows` rows of `k` values: quant bits random, scales finite and moderate.
fn random_tensor(ty: GgmlType, rows: usize, k: usize, rng: &mut Rng) -> Vec<u8> {
    let n = rows * k;
    match ty {
        GgmlType::F32 => return rng.vec(n).iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => {
            return rng
                .vec(n)
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect()
        }
        _ => {}
    }
    let bs = ty.block_size();
    let ts = ty.type_size();
    let mut out: Vec<u8> = (0..n / bs * ts).map(|_| rng.next() as u8).collect();
    for blk in out.chunks_mut(ts) {
        let d = 0.01 + 0.05 * rng.f().abs();
        match ty {
            GgmlType::Q8_0 | GgmlType::Q5_0 => {
                put_f16(blk, 0, d * if rng.f() < 0.0 { -1.0 } else { 1.0 })
            }
            GgmlType::Q4_1 => {
                put_f16(blk, 0, d);
                put_f16(blk, 2, 0.1 * rng.f());
            }
            GgmlType::Q4_K => {
                put_f16(blk, 0, d * 0.05);
                put_f16(blk, 2, d * 0.05);
            }
            GgmlType::Q6_K => put_f16(blk, 208, d * 0.05),
            // E8M0 exponent: scales 2^-9 .. 2^-2 (values up to 6 times that).
            GgmlType::MXFP4 => blk[0] = 118 + (rng.next() % 8) as u8,
            _ => unreachable!(),
        }
    }
    out
}

/// One row (k values) of `ty` in `data` starting at byte `at`, as f32 (same f32 formulas as
/// the format defines: d * q, d * q + m, d*sc*q - dmin*m).
fn dequant_row(ty: GgmlType, data: &[u8], k: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(k);
    match ty {
        GgmlType::F32 => {
            for c in data[..k * 4].chunks(4) {
                out.push(f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            }
        }
        GgmlType::F16 => {
            for i in 0..k {
                out.push(get_f16(data, 2 * i));
            }
        }
        GgmlType::Q8_0 => {
            for b in data[..k / 32 * 34].chunks(34) {
                let d = get_f16(b, 0);
                out.extend(b[2..34].iter().map(|&q| d * (q as i8) as f32));
            }
        }
        GgmlType::Q4_1 => {
            for b in data[..k / 32 * 20].chunks(20) {
                let (d, m) = (get_f16(b, 0), get_f16(b, 2));
                out.extend(b[4..20].iter().map(|&q| d * (q & 15) as f32 + m));
                out.extend(b[4..20].iter().map(|&q| d * (q >> 4) as f32 + m));
            }
        }
        GgmlType::Q5_0 => {
            for b in data[..k / 32 * 22].chunks(22) {
                let d = get_f16(b, 0);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                let qs = &b[6..22];
                for j in 0..32 {
                    let nib = if j < 16 { qs[j] & 15 } else { qs[j - 16] >> 4 } as i32;
                    let q = nib | ((((qh >> j) & 1) as i32) << 4);
                    out.push(d * (q - 16) as f32);
                }
            }
        }
        GgmlType::Q4_K => {
            for b in data[..k / 256 * 144].chunks(144) {
                let (d, dmin) = (get_f16(b, 0), get_f16(b, 2));
                let sc = &b[4..16];
                for s in 0..8 {
                    let (scale, mn) = if s < 4 {
                        (sc[s] & 63, sc[s + 4] & 63)
                    } else {
                        (
                            (sc[s + 4] & 15) | ((sc[s - 4] >> 6) << 4),
                            (sc[s + 4] >> 4) | ((sc[s] >> 6) << 4),
                        )
                    };
                    let q = &b[16 + (s / 2) * 32..16 + (s / 2) * 32 + 32];
                    let shift = (s & 1) * 4;
                    let (ds, dm) = (d * scale as f32, dmin * mn as f32);
                    out.extend(q.iter().map(|&x| ds * ((x >> shift) & 15) as f32 - dm));
                }
            }
        }
        GgmlType::Q6_K => {
            for b in data[..k / 256 * 210].chunks(210) {
                let d = get_f16(b, 208);
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                for idx in 0..256 {
                    let (h, v) = (idx / 128, idx % 128);
                    let (c, l) = (v / 32, v % 32);
                    let lo = (ql[h * 64 + (c & 1) * 32 + l] >> (4 * (c >> 1))) & 15;
                    let hi = (qh[h * 32 + l] >> (2 * c)) & 3;
                    let q = (lo | (hi << 4)) as i32 - 32;
                    out.push(d * (sc[idx / 16] as i8) as f32 * q as f32);
                }
            }
        }
        // The CPU's dequantize (bit-equal to the reference reader's values, golden tests).
        GgmlType::MXFP4 => {
            out.resize(k, 0.0);
            llorch::quant::dequantize(ty, &data[..k / 32 * 17], &mut out).unwrap();
        }
        _ => unreachable!(),
    }
    out
}

fn dequant_rows(ty: GgmlType, data: &[u8], rows: usize, k: usize) -> Vec<Vec<f32>> {
    let rb = ty.bytes_for(k as u64).unwrap() as usize;
    (0..rows)
        .map(|r| dequant_row(ty, &data[r * rb..(r + 1) * rb], k))
        .collect()
}

fn dot(w: &[f32], x: &[f32]) -> f64 {
    w.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum()
}

// ---------- tests ----------

#[test]
fn missing_device_is_no_device_error() {
    // Works with and without a GPU: ordinal 999 never exists.
    match CudaDevice::open(999, 0) {
        Err(Error::NoDevice(msg)) => {
            assert!(!msg.is_empty());
            let _ = writeln!(std::io::stderr(), "  open(999): no device: {msg}");
        }
        other => panic!("open(999) should be NoDevice, got {other:?}"),
    }
}

// Mat-vec, f32 activations, f32 accumulation in a different order than the f64 reference:
// relative error ~ sqrt(k) * 2^-24 ≈ 2e-6 at k = 4096; the weights decode to the same f32
// values up to one rounding (fma contraction). Tolerance 1e-5.
#[test]
fn matvec_all_types() {
    let Some(dev) = device("matvec_all_types") else {
        return;
    };
    let mut rng = Rng(0x5EED_0001);
    for ty in TYPES {
        for &(rows, k) in &[(133usize, 1280usize), (37, 4096)] {
            let w = random_tensor(ty, rows, k, &mut rng);
            let x = rng.vec(k);
            let wd = dev.upload(&w, MemKind::Weights).unwrap();
            let xd = dev.upload_f32(&x, MemKind::Scratch).unwrap();
            let mut yd = dev.alloc(rows * 4, MemKind::Scratch).unwrap();
            dev.fill_bytes(&mut yd, POISON).unwrap();
            dev.matvec(ty, &wd, rows, k, &xd, &mut yd).unwrap();
            let y = dev.download_f32(&yd, rows).unwrap();
            let reference: Vec<f64> = dequant_rows(ty, &w, rows, k)
                .iter()
                .map(|r| dot(r, &x))
                .collect();
            check(
                &format!("matvec {} {rows}x{k}", ty.name()),
                &y,
                &reference,
                1e-5,
            );
        }
    }
}

// The f32 mat-mul kernel (`matmul` below MMA_MIN_TOKENS): the same arithmetic per output as
// mat-vec: tolerance 1e-5. 13 tokens: one full group of 8 and a partial one.
#[test]
fn matmul_all_types() {
    let Some(dev) = device("matmul_all_types") else {
        return;
    };
    let mut rng = Rng(0x5EED_0002);
    for ty in TYPES {
        let (rows, k, n_tok) = (70usize, 768usize, 13usize);
        let w = random_tensor(ty, rows, k, &mut rng);
        let x = rng.vec(n_tok * k);
        let wd = dev.upload(&w, MemKind::Weights).unwrap();
        let xd = dev.upload_f32(&x, MemKind::Scratch).unwrap();
        let mut yd = dev.alloc(n_tok * rows * 4, MemKind::Scratch).unwrap();
        dev.fill_bytes(&mut yd, POISON).unwrap();
        dev.matmul_f32(ty, &wd, rows, k, &xd, n_tok, &mut yd)
            .unwrap();
        let y = dev.download_f32(&yd, n_tok * rows).unwrap();
        let wr = dequant_rows(ty, &w, rows, k);
        let mut reference = Vec::new();
        for t in 0..n_tok {
            for r in &wr {
                reference.push(dot(r, &x[t * k..(t + 1) * k]));
            }
        }
        check(
            &format!("matmul {} {n_tok}x{rows}x{k}", ty.name()),
            &y,
            &reference,
            1e-5,
        );
    }
}

/// Row-major f64 product Y[t][r] = sum_i x[t][i] * w[r][i] for rows `w` of k values.
fn product(w: &[Vec<f64>], x: &[f64], n_tok: usize, k: usize) -> Vec<f64> {
    let mut y = Vec::with_capacity(n_tok * w.len());
    for t in 0..n_tok {
        let xt = &x[t * k..(t + 1) * k];
        y.extend(
            w.iter()
                .map(|r| r.iter().zip(xt).map(|(a, b)| a * b).sum::<f64>()),
        );
    }
    y
}

fn round_f16(v: f32) -> f64 {
    f16::from_f32(v).to_f64()
}

/// The two references of a tensor-core product of dequantized weight rows `wr` with `n_tok`
/// activation rows `x`: exact (f64 of the f32 values), and of both operands rounded to f16.
fn tensor_core_references(
    wr: &[Vec<f32>],
    x: &[f32],
    n_tok: usize,
    k: usize,
) -> (Vec<f64>, Vec<f64>) {
    let rows = |f: fn(f32) -> f64| -> Vec<Vec<f64>> {
        wr.iter()
            .map(|r| r.iter().map(|&v| f(v)).collect())
            .collect()
    };
    let exact = product(
        &rows(|v| v as f64),
        &x.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        n_tok,
        k,
    );
    let rounded = product(
        &rows(round_f16),
        &x.iter().map(|&v| round_f16(v)).collect::<Vec<_>>(),
        n_tok,
        k,
    );
    (exact, rounded)
}

/// The first `n` f32 values of `y`, after asserting that the `guard` values past them are
/// still the poison they were filled with (nothing written past the output).
fn output_before_guard(
    dev: &CudaDevice,
    y: &llorch::backend::cuda::DeviceBuffer,
    n: usize,
    guard: usize,
    what: impl Fn() -> String,
) -> Vec<f32> {
    let mut all = dev.download_f32(y, n + guard).unwrap();
    assert!(
        all[n..].iter().all(|v| v.to_bits() == u32::MAX),
        "{}: wrote past the output",
        what()
    );
    all.truncate(n);
    all
}

// The tensor-core product (kernels/mma_matmul.cu) rounds every decoded weight and every
// activation to f16 (round to nearest, relative error <= 2^-11, rms ~2.8e-4 each) and
// accumulates exactly formed f16 x f16 products in f32. Two references:
// * f64 from the weights and activations rounded to f16 exactly as the kernel does: what is
//   left is f32 accumulation (tensor-core adds truncate: <= 2^-23 of the running sum per
//   16-term step, <= ~1e-5 over k <= 1280) and rare 1-ulp f16 flips where the kernel's fma
//   and the reference's f32 decode differ in the last bit (~2^-13 of weights, ~5e-6 in the
//   norm): tolerance 5e-5. A wrong scale, nibble or index in one 16-value unit of a tile
//   shows up far above it.
// * exact f64 (f32 decode, f32 activations): the two f16 roundings per term give ~4e-4 rms
//   relative error on zero-mean sums (sqrt(2) x 2.8e-4): tolerance 2e-3.
// Shapes: rows that are not a multiple of any tile (70, 129, 133, 200), token counts 2, 17,
// 300, 512 (tails of every tile height), k with an odd number of 32-value chunks where the
// format allows; every tile shape is forced once, then the automatic choice and `matmul`.
// A guard region after Y must stay poisoned (no write past n_tok x rows).
#[test]
fn mma_matmul_all_types() {
    let Some(dev) = device("mma_matmul_all_types") else {
        return;
    };
    let mut rng = Rng(0x5EED_0009);
    const GUARD: usize = 64;
    for ty in TYPES {
        let kq = matches!(ty, GgmlType::Q4_K | GgmlType::Q6_K);
        for &(rows, k, n_tok) in &[
            (133usize, if kq { 768 } else { 800 }, 2usize),
            (70, 512, 17),
            (200, if kq { 1280 } else { 1120 }, 300),
            (129, 768, 512),
        ] {
            let w = random_tensor(ty, rows, k, &mut rng);
            let x = rng.vec(n_tok * k);
            let wr = dequant_rows(ty, &w, rows, k);
            let (exact, rounded) = tensor_core_references(&wr, &x, n_tok, k);
            let wd = dev.upload(&w, MemKind::Weights).unwrap();
            let xd = dev.upload_f32(&x, MemKind::Scratch).unwrap();
            let mut yd = dev
                .alloc((n_tok * rows + GUARD) * 4, MemKind::Scratch)
                .unwrap();
            let tiles = (0..MMA_TILES.len()).map(Some).chain([None, None]);
            for (i, tile) in tiles.enumerate() {
                dev.fill_bytes(&mut yd, POISON).unwrap();
                // The last pass goes through `matmul`, which takes this path where
                // `matmul_uses_mma` says so, else the f32 kernel.
                let via_matmul = i == MMA_TILES.len() + 1;
                if via_matmul {
                    dev.matmul(ty, &wd, rows, k, &xd, n_tok, &mut yd).unwrap();
                } else {
                    dev.matmul_mma(ty, &wd, rows, k, &xd, n_tok, &mut yd, tile)
                        .unwrap();
                }
                let y = &output_before_guard(&dev, &yd, n_tok * rows, GUARD, || {
                    format!("{} {tile:?}", ty.name())
                });
                let what = format!(
                    "mma {} {n_tok}x{rows}x{k} tile {}",
                    ty.name(),
                    match tile {
                        Some(t) => {
                            let tl = MMA_TILES[t];
                            format!("{}x{}k{}", tl.tokens, tl.rows, tl.kgroups)
                        }
                        None if via_matmul => "matmul".into(),
                        None => "auto".into(),
                    }
                );
                // `matmul` keeps F16 and F32 weights' products exact: the f32 kernel.
                let exact_kernel = gemm_parts(ty) > 1;
                if via_matmul
                    && (exact_kernel || !llorch::backend::cuda::matmul_uses_mma(n_tok, rows, k))
                {
                    check(&format!("{what} (f32 kernel)"), y, &exact, 1e-5);
                    continue;
                }
                check(&format!("{what} vs f16-rounded"), y, &rounded, 5e-5);
                check(&format!("{what} vs exact"), y, &exact, 2e-3);
            }
        }
    }
}

// The two-pass product (kernels/gemm_f16.cu): the weights dequantized to f16, the
// activations rounded to f16, then the f16 GEMM with f32 sums: the same roundings as the
// tensor-core product above, so the same two references and tolerances (5e-5 against the
// f16-rounded operands: f32 sums of exact products over k <= 1280; 2e-3 against exact f64:
// two f16 roundings, ~4e-4 rms). The dequantized matrix itself is compared with the f64
// reference's f32 values rounded to f16: every value within one f16 ulp (the kernel's f32
// formula may contract into an fma where the reference rounds twice, a last-bit difference in
// ~2^-13 of the values that can move the f16 rounding by one ulp), at most 1 in 1000 not
// bit-equal; nothing written past rows x k. Shapes: rows and token counts that no tile
// divides (tails of every tile), k with an odd number of 32-value chunks where the format
// allows (the GEMM steps k by 64: a half step at the end), every tile forced, then the
// automatic pick. A guard region after Y must stay poisoned. F16 and F32 weights take the
// exact split product (gemm_parts: values and activations as sums of f16 parts): checked
// against the exact f64 reference at 1e-5, as the f32 kernel is.
#[test]
fn gemm_f16_all_types() {
    let Some(dev) = device("gemm_f16_all_types") else {
        return;
    };
    let mut rng = Rng(0x5EED_0010);
    const GUARD: usize = 64;
    for ty in TYPES {
        let kq = matches!(ty, GgmlType::Q4_K | GgmlType::Q6_K);
        for &(rows, k, n_tok) in &[
            (133usize, if kq { 768 } else { 800 }, 2usize),
            (70, 512, 17),
            (257, if kq { 256 } else { 96 }, 130),
            (200, if kq { 1280 } else { 1120 }, 300),
            (129, 768, 512),
        ] {
            let w = random_tensor(ty, rows, k, &mut rng);
            let x = rng.vec(n_tok * k);
            let wr = dequant_rows(ty, &w, rows, k);
            let (exact, rounded) = tensor_core_references(&wr, &x, n_tok, k);
            let wd = dev.upload(&w, MemKind::Weights).unwrap();
            let xd = dev.upload_f32(&x, MemKind::Scratch).unwrap();
            let mut wh = dev.alloc(rows * k * 2 + GUARD, MemKind::Scratch).unwrap();
            // The products' scratch: f16 parts of the weights and activations.
            let parts = gemm_parts(ty);
            let mut ws = dev.alloc(parts * rows * k * 2, MemKind::Scratch).unwrap();
            let mut xh = dev.alloc(parts * n_tok * k * 2, MemKind::Scratch).unwrap();
            let mut yd = dev
                .alloc((n_tok * rows + GUARD) * 4, MemKind::Scratch)
                .unwrap();

            // The dequantized matrix.
            dev.fill_bytes(&mut wh, POISON).unwrap();
            dev.dequant_f16(ty, &wd, rows, k, &mut wh).unwrap();
            let mut bytes = vec![0u8; rows * k * 2 + GUARD];
            dev.download(&wh, &mut bytes).unwrap();
            assert!(
                bytes[rows * k * 2..].iter().all(|&b| b == POISON),
                "dequant {}: wrote past the matrix",
                ty.name()
            );
            let mut off = 0usize;
            for (i, v) in wr.iter().flatten().enumerate() {
                let got = f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]);
                let want = f16::from_f32(*v);
                if got.to_bits() != want.to_bits() {
                    let ulp = (got.to_bits() as i32 - want.to_bits() as i32).abs();
                    assert!(
                        ulp <= 1 && got.is_finite(),
                        "dequant {} {rows}x{k}: value {i} is {got}, reference {want}",
                        ty.name()
                    );
                    off += 1;
                }
            }
            assert!(
                off * 1000 <= rows * k,
                "dequant {}: {off} of {} values differ by an ulp",
                ty.name(),
                rows * k
            );

            let tiles = (0..GEMM_TILES.len()).map(Some).chain([None]);
            for tile in tiles {
                dev.fill_bytes(&mut yd, POISON).unwrap();
                dev.matmul_gemm(
                    ty, &wd, rows, k, &xd, n_tok, &mut yd, &mut ws, &mut xh, tile,
                )
                .unwrap();
                let y = &output_before_guard(&dev, &yd, n_tok * rows, GUARD, || {
                    format!("{} {tile:?}", ty.name())
                });
                let t = GEMM_TILES[tile.unwrap_or_else(|| dev.gemm_tile_for(n_tok, rows))];
                let what = format!(
                    "gemm {} {n_tok}x{rows}x{k} tile {}x{}{} (dequant: {off} values 1 ulp off)",
                    ty.name(),
                    t.tokens,
                    t.rows,
                    if tile.is_none() { " auto" } else { "" }
                );
                if parts > 1 {
                    check(&format!("{what} split x{parts} vs exact"), y, &exact, 1e-5);
                    continue;
                }
                check(&format!("{what} vs f16-rounded"), y, &rounded, 5e-5);
                check(&format!("{what} vs exact"), y, &exact, 2e-3);
            }
        }
    }
    // Bad arguments are errors, not launches.
    let w = dev.alloc(64 * 34, MemKind::Weights).unwrap();
    let x = dev.alloc(64 * 4, MemKind::Scratch).unwrap();
    let mut y = dev.alloc(64 * 4, MemKind::Scratch).unwrap();
    let mut small = dev.alloc(16, MemKind::Scratch).unwrap();
    let mut xh = dev.alloc(64 * 2, MemKind::Scratch).unwrap();
    let r = dev.matmul_gemm(
        GgmlType::Q8_0,
        &w,
        2,
        32,
        &x,
        2,
        &mut y,
        &mut small,
        &mut xh,
        None,
    );
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    let r = dev.gemm_f16(&xh, &xh, &mut y, 1, 1, 48, None);
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    let r = dev.gemm_f16(&xh, &xh, &mut y, 1, 1, 32, Some(GEMM_TILES.len()));
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
}

// The skinny product (a batched step's few inputs against f16 weight copies): f32 sums of the
// same f16 products as the GEMM tiles, so the same tolerance against the f64 sum of the f16
// operands (5e-5); and row 0's outputs bit-equal whatever the number of inputs (1 to 130:
// one and several input tiles of both kernels, partial tiles): a sequence's products do not
// depend on the batch. Shapes: 7B-like k with a partial last weight tile, a k of one stage
// and a 32-value tail. A guard after Y stays poisoned.
#[test]
fn gemm_f16_skinny_batch_invariant() {
    let Some(dev) = device("gemm_f16_skinny_batch_invariant") else {
        return;
    };
    let mut rng = Rng(0x5EED_0031);
    const GUARD: usize = 64;
    for &(rows, k) in &[(1000usize, 3584usize), (70, 160)] {
        let m_max = 130;
        let to_h = |v: Vec<f32>| -> Vec<f16> { v.into_iter().map(f16::from_f32).collect() };
        let a = to_h(rng.vec(m_max * k));
        let b = to_h(rng.vec(rows * k));
        let bytes = |v: &[f16]| -> Vec<u8> { v.iter().flat_map(|h| h.to_le_bytes()).collect() };
        let ad = dev.upload(&bytes(&a), MemKind::Scratch).unwrap();
        let bd = dev.upload(&bytes(&b), MemKind::Weights).unwrap();
        let mut yd = dev
            .alloc((m_max * rows + GUARD) * 4, MemKind::Scratch)
            .unwrap();
        let mut row0: Option<Vec<f32>> = None;
        for m in [1usize, 7, 16, 17, 32, 33, 130] {
            dev.fill_bytes(&mut yd, POISON).unwrap();
            dev.gemm_f16_skinny(&ad, &bd, &mut yd, m, rows, k).unwrap();
            let y = output_before_guard(&dev, &yd, m * rows, GUARD, || format!("skinny m={m}"));
            let want: Vec<f64> = (0..m * rows)
                .map(|i| {
                    let (t, r) = (i / rows, i % rows);
                    (0..k)
                        .map(|j| a[t * k + j].to_f64() * b[r * k + j].to_f64())
                        .sum()
                })
                .collect();
            check(&format!("skinny {m}x{rows}x{k}"), &y, &want, 5e-5);
            match &row0 {
                None => row0 = Some(y[..rows].to_vec()),
                Some(r0) => {
                    let same = r0
                        .iter()
                        .zip(&y[..rows])
                        .all(|(p, q)| p.to_bits() == q.to_bits());
                    assert!(
                        same,
                        "skinny {rows}x{k}: input 0's outputs with {m} inputs differ from alone"
                    );
                }
            }
        }
    }
    let mut y = dev.alloc(64 * 4, MemKind::Scratch).unwrap();
    let xh = dev.alloc(64 * 2, MemKind::Scratch).unwrap();
    let r = dev.gemm_f16_skinny(&xh, &xh, &mut y, 1, 1, 48);
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
}

// Embedding rows decode with the reference's f32 formulas; the only difference is a possible
// fused multiply-add (one rounding of ~6e-8 relative): tolerance 1e-6.
#[test]
fn embed_all_types() {
    let Some(dev) = device("embed_all_types") else {
        return;
    };
    let mut rng = Rng(0x5EED_0003);
    for ty in TYPES {
        let (n_vocab, k) = (50usize, 512usize);
        let table = random_tensor(ty, n_vocab, k, &mut rng);
        let tokens: Vec<u32> = vec![
            0,
            49,
            rng.below(n_vocab) as u32,
            rng.below(n_vocab) as u32,
            7,
        ];
        let td = dev.upload(&table, MemKind::Weights).unwrap();
        let mut out = dev.alloc(tokens.len() * k * 4, MemKind::Scratch).unwrap();
        dev.fill_bytes(&mut out, POISON).unwrap();
        dev.embed(ty, &td, n_vocab, k, &tokens, &mut out).unwrap();
        let got = dev.download_f32(&out, tokens.len() * k).unwrap();
        let rows = dequant_rows(ty, &table, n_vocab, k);
        let reference: Vec<f64> = tokens
            .iter()
            .flat_map(|&t| rows[t as usize].iter().map(|&v| v as f64))
            .collect();
        check(&format!("embed {}", ty.name()), &got, &reference, 1e-6);
        let bad = dev.embed(ty, &td, n_vocab, k, &[3, 50], &mut out);
        assert!(
            matches!(bad, Err(Error::InvalidArgument(_))),
            "token 50 of 50: {bad:?}"
        );
    }
}

// f32 sum of squares over n = 896 (~sqrt(n) * 2^-24 relative) and one division: tolerance 1e-5.
#[test]
fn rmsnorm_matches_reference() {
    let Some(dev) = device("rmsnorm_matches_reference") else {
        return;
    };
    let mut rng = Rng(0x5EED_0004);
    let (rows, n, eps) = (5usize, 896usize, 1e-6f32);
    let x: Vec<f32> = rng.vec(rows * n).iter().map(|v| v * 3.0).collect();
    let w = rng.vec(n);
    let reference: Vec<f64> = x
        .chunks(n)
        .flat_map(|r| {
            let ms = r.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / n as f64;
            let inv = 1.0 / (ms + eps as f64).sqrt();
            r.iter()
                .zip(&w)
                .map(move |(&v, &g)| v as f64 * inv * g as f64)
        })
        .collect();
    let mut xd = dev.upload_f32(&x, MemKind::Scratch).unwrap();
    let wd = dev.upload_f32(&w, MemKind::Weights).unwrap();
    let mut yd = dev.alloc(rows * n * 4, MemKind::Scratch).unwrap();
    dev.fill_bytes(&mut yd, POISON).unwrap();
    dev.rmsnorm(&xd, &wd, rows, n, eps, &mut yd).unwrap();
    check(
        "rmsnorm",
        &dev.download_f32(&yd, rows * n).unwrap(),
        &reference,
        1e-5,
    );
    dev.rmsnorm_inplace(&mut xd, &wd, rows, n, eps).unwrap();
    check(
        "rmsnorm in place",
        &dev.download_f32(&xd, rows * n).unwrap(),
        &reference,
        1e-5,
    );
}

// The reference computes angles in f64. The kernel's f32 angle pos * base^(-2i/d) carries a
// relative error of ~2 roundings (1.2e-7), i.e. up to 1.2e-7 * 4000 ≈ 5e-4 rad at the largest
// positions for pair 0, shrinking geometrically with the pair index; over the vector (RMS over
// >= 32 pairs) that is ≲ 1e-4: tolerance 2e-4 (measured on an H200: 1e-5 to 2e-5).
// Dimensions past rot_dim must come back bit for bit.
#[test]
fn rope_neox_and_normal() {
    let Some(dev) = device("rope_neox_and_normal") else {
        return;
    };
    let mut rng = Rng(0x5EED_0005);
    for &(neox, head_dim, rot_dim, base) in &[
        (true, 64usize, 64usize, 1_000_000f32),
        (false, 128, 128, 10_000.0),
        (true, 128, 64, 10_000.0),
    ] {
        let (n_tok, n_heads) = (9usize, 3usize);
        let x = rng.vec(n_tok * n_heads * head_dim);
        let pos: Vec<i32> = (0..n_tok).map(|_| rng.below(4000) as i32).collect();
        let mut reference: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        for t in 0..n_tok {
            for h in 0..n_heads {
                let v = &mut reference[(t * n_heads + h) * head_dim..][..head_dim];
                for i in 0..rot_dim / 2 {
                    let theta =
                        pos[t] as f64 * (base as f64).powf(-2.0 * i as f64 / rot_dim as f64);
                    let (a_i, b_i) = if neox {
                        (i, i + rot_dim / 2)
                    } else {
                        (2 * i, 2 * i + 1)
                    };
                    let (a, b) = (v[a_i], v[b_i]);
                    v[a_i] = a * theta.cos() - b * theta.sin();
                    v[b_i] = a * theta.sin() + b * theta.cos();
                }
            }
        }
        let mut xd = dev.upload_f32(&x, MemKind::Scratch).unwrap();
        let pd = dev.upload_i32(&pos, MemKind::Scratch).unwrap();
        let p = RopeParams {
            rot_dim,
            base,
            pos_scale: 1.0,
            neox,
        };
        dev.rope(&mut xd, &pd, n_tok, n_heads, head_dim, p).unwrap();
        let got = dev.download_f32(&xd, x.len()).unwrap();
        check(
            &format!("rope neox={neox} hd={head_dim} rot={rot_dim}"),
            &got,
            &reference,
            2e-4,
        );
        for (i, (&g, &orig)) in got.iter().zip(&x).enumerate() {
            if i % head_dim >= rot_dim {
                assert_eq!(
                    g.to_bits(),
                    orig.to_bits(),
                    "element {i} past rot_dim changed"
                );
            }
        }
    }
}

// rope_scaled: per-pair divisors (Llama 3 / LongRoPE / YaRN tables), linear position scale
// and the attention factor on the rotation, against f64; same angle error as `rope` above,
// the factor multiplies values by ~1.2 (tolerance 2e-4 unchanged).
#[test]
fn rope_scaled_divisors_and_factor() {
    let Some(dev) = device("rope_scaled_divisors_and_factor") else {
        return;
    };
    let mut rng = Rng(0x5EED_0015);
    for &(neox, head_dim, rot_dim, base, pos_scale, mscale) in &[
        (true, 96usize, 96usize, 10_000f32, 1.0f32, 1.19f32),
        (false, 128, 128, 500_000.0, 0.25, 1.0),
    ] {
        let (n_tok, n_heads) = (7usize, 2usize);
        let x = rng.vec(n_tok * n_heads * head_dim);
        let pos: Vec<i32> = (0..n_tok).map(|_| rng.below(4000) as i32).collect();
        let div: Vec<f32> = (0..rot_dim / 2)
            .map(|_| 1.0 + 7.0 * rng.f().abs())
            .collect();
        let mut reference: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        for t in 0..n_tok {
            for h in 0..n_heads {
                let v = &mut reference[(t * n_heads + h) * head_dim..][..head_dim];
                for (i, &di) in div.iter().enumerate() {
                    let f = (base as f64).powf(-2.0 * i as f64 / rot_dim as f64) / di as f64;
                    let theta = pos[t] as f64 * pos_scale as f64 * f;
                    let (a_i, b_i) = if neox {
                        (i, i + rot_dim / 2)
                    } else {
                        (2 * i, 2 * i + 1)
                    };
                    let (a, b) = (v[a_i], v[b_i]);
                    let m = mscale as f64;
                    v[a_i] = m * (a * theta.cos() - b * theta.sin());
                    v[b_i] = m * (a * theta.sin() + b * theta.cos());
                }
            }
        }
        let mut xd = dev.upload_f32(&x, MemKind::Scratch).unwrap();
        let pd = dev.upload_i32(&pos, MemKind::Scratch).unwrap();
        let p = RopeParams {
            rot_dim,
            base,
            pos_scale,
            neox,
        };
        dev.rope_scaled(&mut xd, &pd, n_tok, n_heads, head_dim, p, mscale, &div)
            .unwrap();
        let got = dev.download_f32(&xd, x.len()).unwrap();
        check(
            &format!("rope_scaled neox={neox} hd={head_dim} scale={pos_scale} m={mscale}"),
            &got,
            &reference,
            2e-4,
        );
    }
    // A table of the wrong length is an error, not a read past it.
    let mut xd = dev.upload_f32(&[0.0; 64], MemKind::Scratch).unwrap();
    let pd = dev.upload_i32(&[0], MemKind::Scratch).unwrap();
    let p = RopeParams {
        rot_dim: 64,
        base: 10_000.0,
        pos_scale: 1.0,
        neox: true,
    };
    assert!(dev
        .rope_scaled(&mut xd, &pd, 1, 1, 64, p, 1.0, &[1.0; 31])
        .is_err());
}

/// f64 causal attention over K/V as the cache holds them (f16-rounded, or f32 with `f32_kv`),
/// [n_tok][n_heads][hd] layout.
#[allow(clippy::too_many_arguments)]
fn attention_ref(
    q: &[f32],
    k_all: &[f32],
    v_all: &[f32],
    n_tok: usize,
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    pos0: usize,
    scale: f32,
    window: usize,
    sinks: Option<&[f32]>,
    f32_kv: bool,
) -> Vec<f64> {
    let r16 = |v: f32| {
        if f32_kv {
            v as f64
        } else {
            f16::from_f32(v).to_f64()
        }
    };
    let mut out = vec![0.0; n_tok * n_heads * hd];
    for t in 0..n_tok {
        let qpos = pos0 + t;
        let lo = if window > 0 {
            (qpos + 1).saturating_sub(window)
        } else {
            0
        };
        for h in 0..n_heads {
            let kvh = h / (n_heads / n_kv);
            let qv = &q[(t * n_heads + h) * hd..][..hd];
            let scores: Vec<f64> = (lo..=qpos)
                .map(|j| {
                    let kr = &k_all[(j * n_kv + kvh) * hd..][..hd];
                    qv.iter()
                        .zip(kr)
                        .map(|(&a, &b)| (a * scale) as f64 * r16(b))
                        .sum::<f64>()
                })
                .collect();
            // A sink joins the max and the denominator, with no value.
            let sink = sinks.map(|s| s[h] as f64);
            let m = scores
                .iter()
                .cloned()
                .chain(sink)
                .fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let l: f64 = p.iter().sum::<f64>() + sink.map_or(0.0, |s| (s - m).exp());
            let o = &mut out[(t * n_heads + h) * hd..][..hd];
            for (jj, j) in (lo..=qpos).enumerate() {
                let vr = &v_all[(j * n_kv + kvh) * hd..][..hd];
                for d in 0..hd {
                    o[d] += p[jj] / l * r16(vr[d]);
                }
            }
        }
    }
    out
}

// f32 dot products over head_dim (≤ 128 terms, ~1e-7 relative), expf (≤ 2 ulp) and an f32
// weighted average: expected ~1e-6; tolerance 1e-5. K/V are f16 in the cache (or f32: every
// case runs over both types); the reference rounds them the same way, so that rounding is not
// part of the error. Every case runs through
// `attention` (the per-query kernel below ATTN_TILED_MIN_TOKENS, the tiled one from there) and
// through `attention_tiled` directly (same arithmetic, another summation order): prompts of
// several 16-query blocks and 32-key tiles, GQA, windows, head_dim 32 to 256.
#[test]
fn attention_decode_and_prefill() {
    let Some(dev) = device("attention_decode_and_prefill") else {
        return;
    };
    let mut rng = Rng(0x5EED_0006);
    // (n_heads, n_kv, head_dim, prefix pos0, new tokens n_tok, window)
    let cases = [
        (8usize, 2usize, 64usize, 300usize, 1usize, 0usize), // decode, GQA 4:1
        (8, 2, 64, 20, 37, 0),                               // prefill after a prefix
        (14, 2, 64, 0, 29, 0),                               // prefill from 0 (Qwen2.5-0.5B shape)
        (4, 1, 256, 100, 5, 16),                             // head_dim 256, sliding window
        (6, 6, 128, 513, 1, 0),                              // no GQA, odd length
        (14, 2, 64, 256, 256, 0),                            // 0.5B prompt chunk after 256
        (28, 4, 128, 0, 300, 0),                             // 7B shape, partial last block
        (4, 1, 256, 40, 70, 33),                             // head_dim 256, window, tiles
        (2, 1, 32, 3, 17, 0),                                // head_dim 32
    ];
    let both_types = cases.iter().flat_map(|c| [(c, false), (c, true)]);
    for (&(n_heads, n_kv, hd, pos0, n_tok, window), f32_kv) in both_types {
        let max_ctx = pos0 + n_tok + 3;
        let total = pos0 + n_tok;
        let k_all: Vec<f32> = rng.vec(total * n_kv * hd);
        let v_all: Vec<f32> = rng.vec(total * n_kv * hd);
        let q: Vec<f32> = rng
            .vec(n_tok * n_heads * hd)
            .iter()
            .map(|v| v * 2.0)
            .collect();
        let scale = 1.0 / (hd as f32).sqrt();
        let kv = dev.alloc_kv_layer(n_kv, hd, max_ctx, f32_kv).unwrap();
        kv.fill(&dev, POISON).unwrap();
        let cache = kv.layer(0);
        // The prefix first, then the new tokens: two kv_store calls as a session would do.
        let per = n_kv * hd;
        if pos0 > 0 {
            let kd = dev
                .upload_f32(&k_all[..pos0 * per], MemKind::Scratch)
                .unwrap();
            let vd = dev
                .upload_f32(&v_all[..pos0 * per], MemKind::Scratch)
                .unwrap();
            dev.kv_store(&kd, &vd, pos0, &cache, 0).unwrap();
        }
        let kd = dev
            .upload_f32(&k_all[pos0 * per..], MemKind::Scratch)
            .unwrap();
        let vd = dev
            .upload_f32(&v_all[pos0 * per..], MemKind::Scratch)
            .unwrap();
        dev.kv_store(&kd, &vd, n_tok, &cache, pos0).unwrap();
        let qd = dev.upload_f32(&q, MemKind::Scratch).unwrap();
        let mut od = dev.alloc(q.len() * 4, MemKind::Scratch).unwrap();
        dev.fill_bytes(&mut od, POISON).unwrap();
        // GPT-OSS's sinks: below, among and above the scores (scaled scores here are ~±2).
        let sinks: Vec<f32> = (0..n_heads).map(|h| (h % 3) as f32 * 3.0 - 3.0).collect();
        let sinks_d = dev.upload_f32(&sinks, MemKind::Scratch).unwrap();
        for with_sinks in [false, true] {
            let (sk, skd) = if with_sinks {
                (Some(&sinks[..]), Some(&sinks_d))
            } else {
                (None, None)
            };
            dev.fill_bytes(&mut od, POISON).unwrap();
            dev.attention(
                &qd, n_tok, n_heads, &cache, pos0, scale, window, skd, &mut od,
            )
            .unwrap();
            let got = dev.download_f32(&od, q.len()).unwrap();
            let reference = attention_ref(
                &q, &k_all, &v_all, n_tok, n_heads, n_kv, hd, pos0, scale, window, sk, f32_kv,
            );
            let what = format!(
                "h={n_heads} kv={n_kv} hd={hd} pos0={pos0} n={n_tok} win={window} sinks={with_sinks} f32_kv={f32_kv}"
            );
            check(&format!("attention {what}"), &got, &reference, 1e-5);
            dev.fill_bytes(&mut od, POISON).unwrap();
            dev.attention_tiled(
                &qd, n_tok, n_heads, &cache, pos0, scale, window, skd, &mut od,
            )
            .unwrap();
            let got = dev.download_f32(&od, q.len()).unwrap();
            check(&format!("attention_tiled {what}"), &got, &reference, 1e-5);
        }
        // The cache holds exactly the f16 (or the f32) of what was stored, in pages of
        // KV_PAGE positions: K then V, each [head][position in the page][hd].
        let mut pages = vec![vec![0u8; kv.page_bytes()]; kv.pages().len()];
        for (i, p) in pages.iter_mut().enumerate() {
            kv.download_page(&dev, i, p).unwrap();
        }
        for _ in 0..200 {
            let (j, h, d) = (rng.below(total), rng.below(n_kv), rng.below(hd));
            let x = k_all[(j * n_kv + h) * hd + d];
            let kb = &pages[j / KV_PAGE];
            let row = (h * KV_PAGE + j % KV_PAGE) * hd + d;
            let (got, want) = if f32_kv {
                let at = row * 4;
                (f32::from_le_bytes(kb[at..at + 4].try_into().unwrap()), x)
            } else {
                let at = row * 2;
                let h = f16::from_le_bytes([kb[at], kb[at + 1]]);
                (h.to_f32(), f16::from_f32(x).to_f32())
            };
            assert_eq!(
                got, want,
                "K cache at pos {j} head {h} dim {d} f32_kv={f32_kv}"
            );
        }
        // Past the cache's end is an answer, not a fault.
        let full = dev.attention(
            &qd,
            n_tok,
            n_heads,
            &cache,
            kv.capacity() - n_tok + 1,
            scale,
            0,
            None,
            &mut od,
        );
        assert!(matches!(full, Err(Error::ContextFull(_))), "{full:?}");
    }
}

// expf/tanhf are within 2 ulp; one or two more roundings: tolerance 1e-6.
#[test]
fn elementwise_ops() {
    let Some(dev) = device("elementwise_ops") else {
        return;
    };
    let mut rng = Rng(0x5EED_0007);
    let n = 4864 * 3 + 17;
    let g: Vec<f32> = rng.vec(n).iter().map(|v| v * 6.0).collect();
    let u = rng.vec(n);
    let gd = dev.upload_f32(&g, MemKind::Scratch).unwrap();
    let ud = dev.upload_f32(&u, MemKind::Scratch).unwrap();
    let mut od = dev.alloc(n * 4, MemKind::Scratch).unwrap();

    dev.fill_bytes(&mut od, POISON).unwrap();
    dev.swiglu(&gd, &ud, n, &mut od).unwrap();
    let r: Vec<f64> = g
        .iter()
        .zip(&u)
        .map(|(&g, &u)| g as f64 / (1.0 + (-g as f64).exp()) * u as f64)
        .collect();
    check("swiglu", &dev.download_f32(&od, n).unwrap(), &r, 1e-6);

    dev.fill_bytes(&mut od, POISON).unwrap();
    dev.geglu(&gd, &ud, n, &mut od).unwrap();
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let r: Vec<f64> = g
        .iter()
        .zip(&u)
        .map(|(&g, &u)| {
            let g = g as f64;
            0.5 * g * (1.0 + (c * (g + 0.044715 * g * g * g)).tanh()) * u as f64
        })
        .collect();
    check("geglu", &dev.download_f32(&od, n).unwrap(), &r, 1e-6);

    // GPT-OSS's experts' activation: g up to ±6 and u scaled to ±8, past the limit of 7.
    let ub: Vec<f32> = u.iter().map(|v| v * 8.0).collect();
    let ubd = dev.upload_f32(&ub, MemKind::Scratch).unwrap();
    dev.fill_bytes(&mut od, POISON).unwrap();
    dev.clamped_swiglu(&gd, &ubd, n, 1.702, 7.0, &od).unwrap();
    let r: Vec<f64> = g
        .iter()
        .zip(&ub)
        .map(|(&g, &u)| {
            let (g, u) = ((g as f64).min(7.0), (u as f64).clamp(-7.0, 7.0));
            g / (1.0 + (-1.702 * g).exp()) * (u + 1.0)
        })
        .collect();
    check(
        "clamped_swiglu",
        &dev.download_f32(&od, n).unwrap(),
        &r,
        1e-6,
    );

    let (n_tok, width) = (7usize, 896usize);
    let y = rng.vec(n_tok * width);
    let b = rng.vec(width);
    let mut yd = dev.upload_f32(&y, MemKind::Scratch).unwrap();
    let bd = dev.upload_f32(&b, MemKind::Weights).unwrap();
    dev.add_bias(&mut yd, &bd, n_tok, width).unwrap();
    let r: Vec<f64> = y
        .iter()
        .enumerate()
        .map(|(i, &v)| (v + b[i % width]) as f64)
        .collect();
    check(
        "add_bias",
        &dev.download_f32(&yd, y.len()).unwrap(),
        &r,
        1e-7,
    );

    let x = rng.vec(n_tok * width);
    let xd = dev.upload_f32(&x, MemKind::Scratch).unwrap();
    dev.add(&mut yd, &xd, n_tok * width).unwrap();
    dev.scale(&mut yd, 0.5, n_tok * width).unwrap();
    let r2: Vec<f64> = r
        .iter()
        .zip(&x)
        .map(|(&a, &x)| ((a as f32 + x) * 0.5) as f64)
        .collect();
    check(
        "add + scale",
        &dev.download_f32(&yd, y.len()).unwrap(),
        &r2,
        1e-7,
    );
}

#[test]
fn argmax_picks_first_maximum() {
    let Some(dev) = device("argmax_picks_first_maximum") else {
        return;
    };
    let mut rng = Rng(0x5EED_0008);
    let cols = 151_936; // Qwen2.5 vocabulary
    let mut logits: Vec<f32> = rng.vec(4 * cols).iter().map(|v| v * 20.0).collect();
    // Row 1: a tie between two far-apart columns: the smaller index wins.
    logits[cols + 90_000] = 100.0;
    logits[cols + 12_345] = 100.0;
    // Row 2: NaNs are skipped, even before the maximum.
    logits[2 * cols + 5] = f32::NAN;
    logits[2 * cols + 151_935] = 50.0;
    // Row 3: all -inf except one finite value.
    for v in &mut logits[3 * cols..] {
        *v = f32::NEG_INFINITY;
    }
    logits[3 * cols + 77] = -1e30;
    let expected: Vec<u32> = logits
        .chunks(cols)
        .map(|r| {
            let mut best = 0;
            for (i, &v) in r.iter().enumerate() {
                if v > r[best] || r[best].is_nan() {
                    best = i;
                }
            }
            best as u32
        })
        .collect();
    let ld = dev.upload_f32(&logits, MemKind::Scratch).unwrap();
    let got = dev.argmax(&ld, 4, cols).unwrap();
    assert_eq!(got, expected);
    assert_eq!(got[1], 12_345);
    let nan = dev.upload_f32(&[f32::NAN; 100], MemKind::Scratch).unwrap();
    assert!(matches!(dev.argmax(&nan, 1, 100), Err(Error::Internal(_))));
    // One buffer through launches of other row and column counts (a row is split in up to
    // 32 slices whose last block merges them and leaves the row's counter zero for the next
    // launch): each launch's picks equal the host's.
    let buf = dev.argmax_buffer(8).unwrap();
    for (rows, n) in [
        (4, cols),
        (1, cols),
        (3, 100),
        (4, 4097),
        (2, 1),
        (4, cols),
        (1, 2048),
    ] {
        let got = dev.argmax_into(&ld, 0, rows, n, &buf).unwrap();
        let want: Vec<Option<u32>> = logits
            .chunks(n)
            .take(rows)
            .map(|r| {
                let mut best: Option<usize> = None;
                for (i, &v) in r.iter().enumerate() {
                    if !v.is_nan() && best.map_or(true, |b| v > r[b]) {
                        best = Some(i);
                    }
                }
                best.map(|b| b as u32)
            })
            .collect();
        assert_eq!(got, want, "{rows} rows of {n}");
    }
    assert!(dev.argmax_into(&ld, 0, 9, 100, &buf).is_err());
}

#[test]
fn bad_arguments_are_errors() {
    let Some(dev) = device("bad_arguments_are_errors") else {
        return;
    };
    let w = dev.alloc(64 * 34, MemKind::Weights).unwrap();
    let x = dev.alloc(64 * 4, MemKind::Scratch).unwrap();
    let mut y = dev.alloc(4, MemKind::Scratch).unwrap();
    // y too small for 2 rows.
    let r = dev.matvec(GgmlType::Q8_0, &w, 2, 32, &x, &mut y);
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    // k not a multiple of the block.
    let r = dev.matvec(GgmlType::Q8_0, &w, 1, 40, &x, &mut y);
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    // A type without kernels.
    let r = dev.matvec(GgmlType::Q2_K, &w, 1, 256, &x, &mut y);
    assert!(matches!(r, Err(Error::Unsupported(_))), "{r:?}");
    // Weights too small for the rows asked.
    let r = dev.matvec(GgmlType::Q8_0, &w, 1, 2048, &x, &mut y);
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    assert!(matches!(
        dev.alloc_kv_layer(2, 48, 16, false),
        Err(Error::Unsupported(_))
    ));
}

#[test]
fn budget_out_of_memory_and_no_leak() {
    let Some(_probe) = device("budget_out_of_memory_and_no_leak") else {
        return;
    };
    const MIB: usize = 1 << 20;
    let dev = CudaDevice::open(0, 4 * MIB as u64).unwrap();
    let m0 = dev.memory().unwrap();
    assert_eq!((m0.used, m0.budget), (0, 4 * MIB as u64));
    assert_eq!(m0.available, 4 * MIB as u64);

    let a = dev.alloc(3 * MIB, MemKind::Weights).unwrap();
    let m1 = dev.memory().unwrap();
    assert_eq!(
        (m1.used, m1.weights, m1.available),
        (3 * MIB as u64, 3 * MIB as u64, MIB as u64)
    );

    // Over budget: an answer with the numbers, and nothing held afterwards.
    match dev.alloc(2 * MIB, MemKind::KvCache) {
        Err(Error::OutOfMemory(msg)) => {
            let _ = writeln!(std::io::stderr(), "  over budget: {msg}");
            for n in [2 * MIB, 4 * MIB, 3 * MIB, MIB] {
                assert!(msg.contains(&n.to_string()), "message lacks {n}: {msg}");
            }
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    // A KV cache whose first pages fit but not all: those must be given back.
    let r = dev.alloc_kv_layer(1, 64, 5000, false); // 313 pages of 4,096 bytes, 1.28 MB
    assert!(matches!(r, Err(Error::OutOfMemory(_))), "{r:?}");
    assert_eq!(
        dev.memory().unwrap().used,
        3 * MIB as u64,
        "failed allocations leaked"
    );

    // Within budget still works, up to exactly the budget.
    let b = dev.alloc(MIB, MemKind::Scratch).unwrap();
    assert_eq!(dev.memory().unwrap().available, 0);
    drop(a);
    drop(b);
    let m2 = dev.memory().unwrap();
    assert_eq!((m2.used, m2.weights, m2.kv_cache, m2.scratch), (0, 0, 0, 0));
    let c = dev.alloc(4 * MIB, MemKind::Weights).unwrap();
    drop(c);

    // No budget: more than the card has is OutOfMemory from the driver, also with numbers.
    let big = dev_unbudgeted();
    let card = big.memory().unwrap();
    let too_much = (card.device_total as usize).saturating_mul(2);
    match big.alloc(too_much, MemKind::Weights) {
        Err(Error::OutOfMemory(msg)) => {
            let _ = writeln!(std::io::stderr(), "  over the card: {msg}");
            assert!(msg.contains(&too_much.to_string()), "{msg}");
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    assert_eq!(big.memory().unwrap().used, 0);
    let ok = big.alloc(MIB, MemKind::Scratch).unwrap();
    assert_eq!(big.memory().unwrap().used, MIB as u64);
    drop(ok);

    // Freed memory goes back to the card (within other processes' noise: allow 64 MiB).
    let before = big.memory().unwrap().device_free;
    let blocks: Vec<_> = (0..8)
        .map(|_| big.alloc(256 * MIB, MemKind::Scratch).unwrap())
        .collect();
    let during = big.memory().unwrap().device_free;
    drop(blocks);
    let after = big.memory().unwrap().device_free;
    let _ = writeln!(
        std::io::stderr(),
        "  card free: before {before}, with 2 GiB {during}, after {after}"
    );
    assert!(before.saturating_sub(during) >= 2048 * MIB as u64 - 64 * MIB as u64);
    assert!(
        after + 64 * (MIB as u64) >= before,
        "2 GiB allocated then freed: {before} -> {after}"
    );
}

fn dev_unbudgeted() -> CudaDevice {
    CudaDevice::open(0, 0).unwrap()
}

// ---------- fused decode kernels (kernels/decode.cu) ----------

fn rmsnorm64(x: &[f32], w: &[f32], eps: f64) -> Vec<f64> {
    let ss: f64 = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ss + eps).sqrt();
    x.iter()
        .zip(w)
        .map(|(&v, &g)| v as f64 * inv * g as f64)
        .collect()
}

fn dot64(w: &[f32], x: &[f64]) -> f64 {
    w.iter().zip(x).map(|(&a, &b)| a as f64 * b).sum()
}

/// Weights uploaded as the model does: 16 bytes of padding past the last row.
fn upload_weights(dev: &CudaDevice, w: &[u8]) -> llorch::backend::cuda::DeviceBuffer {
    dev.upload_padded(w, 16, MemKind::Weights).unwrap()
}

/// A random `rows` x `k` matrix of type `ty` uploaded as the model does, and its rows
/// dequantized on the host.
fn random_matrix(
    dev: &CudaDevice,
    ty: GgmlType,
    rows: usize,
    k: usize,
    rng: &mut Rng,
) -> (llorch::backend::cuda::DeviceBuffer, Vec<Vec<f32>>) {
    let w = random_tensor(ty, rows, k, rng);
    (upload_weights(dev, &w), dequant_rows(ty, &w, rows, k))
}

/// i32 values in device memory.
fn upload_i32(dev: &CudaDevice, v: &[i32]) -> llorch::backend::cuda::DeviceBuffer {
    let bytes: Vec<u8> = v.iter().flat_map(|i| i.to_le_bytes()).collect();
    dev.upload(&bytes, MemKind::Scratch).unwrap()
}

/// `n` f32 of device memory, all NaN (an output the kernel must overwrite).
fn poisoned(dev: &CudaDevice, n: usize) -> llorch::backend::cuda::DeviceBuffer {
    let mut o = dev.alloc(n * 4, MemKind::Scratch).unwrap();
    dev.fill_bytes(&mut o, POISON).unwrap();
    o
}

// F32/F16 weights: the same f32 arithmetic per output as mat-vec (plus the norm's f32 sum of
// squares): tolerance 1e-5. Quantized weights multiply the input quantized to 16 bits per
// 32 values (x ≈ d·q1 + d/254·q2, d = max|x|/127): each value is off by at most d/508, about
// max|x|·1.6e-5, ≈ 1e-5 of the dot's size for these inputs: tolerance 1e-4. Every type, each
// epilogue, with and without the folded RMSNorm.
#[test]
fn fused_matvec_all_types_and_epilogues() {
    use llorch::backend::cuda::{Epilogue, MatRef, MatVecOut, Norm};
    let Some(dev) = device("fused_matvec_all_types_and_epilogues") else {
        return;
    };
    let mut rng = Rng(0x5EED_00F1);
    // k: a multiple of 256 (K-quants) and one that spans several stage steps.
    for ty in TYPES {
        for &k in &[1280usize, 4864] {
            if ty.block_size() == 256 && k % 256 != 0 {
                continue;
            }
            let rows = [133usize, 37, 64];
            let (wd, wf): (Vec<_>, Vec<_>) = rows
                .iter()
                .map(|&r| random_matrix(&dev, ty, r, k, &mut rng))
                .unzip();
            let x = rng.vec(k);
            let g: Vec<f32> = rng.vec(k).iter().map(|v| 1.0 + 0.5 * v).collect();
            let bias = rng.vec(rows[0]);
            let xd = dev.upload_f32(&x, MemKind::Scratch).unwrap();
            let gd = dev.upload_f32(&g, MemKind::Scratch).unwrap();
            let rec = dev
                .alloc(CudaDevice::input_record_bytes(k), MemKind::Scratch)
                .unwrap();
            let bd = dev.upload_f32(&bias, MemKind::Scratch).unwrap();
            let eps = 1e-6;
            let xn = rmsnorm64(&x, &g, eps as f64);
            let xr: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let outs: Vec<_> = rows.iter().map(|&r| poisoned(&dev, r)).collect();
            let normed = poisoned(&dev, k);
            let mat = |i: usize| MatRef {
                ty,
                w: &wd[i],
                rows: rows[i],
                cols: k,
            };
            let name = |what: &str| format!("fused {what} {} k={k}", ty.name());
            let tol = if matches!(ty, GgmlType::F32 | GgmlType::F16) {
                1e-5
            } else {
                1e-4
            };

            // Plain, three products, the first with a bias, input normalized.
            let prods: Vec<MatVecOut> = (0..3)
                .map(|i| MatVecOut {
                    mat: mat(i),
                    bias: (i == 0).then_some(&bd),
                    out: &outs[i],
                })
                .collect();
            let norm = Norm {
                weight: &gd,
                eps,
                normed: Some(&normed),
            };
            dev.fused_matvec(&xd, k, Some(norm), &prods, Epilogue::Plain, &rec, false)
                .unwrap();
            check(
                &name("normed"),
                &dev.download_f32(&normed, k).unwrap(),
                &xn,
                1e-6,
            );
            for i in 0..3 {
                let reference: Vec<f64> = wf[i]
                    .iter()
                    .enumerate()
                    .map(|(r, w)| dot64(w, &xn) + if i == 0 { bias[r] as f64 } else { 0.0 })
                    .collect();
                let got = dev.download_f32(&outs[i], rows[i]).unwrap();
                check(&name(&format!("plain {i}")), &got, &reference, tol);
            }

            // Gated: gate = matrix 0, up = matrix 0 again (equal rows), act = silu(g) * u.
            let act = dev.alloc(rows[0] * 4, MemKind::Scratch).unwrap();
            let up = dev.alloc(rows[0] * 4, MemKind::Scratch).unwrap();
            let (w2d, w2f) = random_matrix(&dev, ty, rows[0], k, &mut rng);
            let prods = [
                MatVecOut {
                    mat: mat(0),
                    bias: None,
                    out: &outs[0],
                },
                MatVecOut {
                    mat: MatRef {
                        ty,
                        w: &w2d,
                        rows: rows[0],
                        cols: k,
                    },
                    bias: None,
                    out: &up,
                },
            ];
            let norm = Norm {
                weight: &gd,
                eps,
                normed: Some(&normed),
            };
            dev.fused_matvec(
                &xd,
                k,
                Some(norm),
                &prods,
                Epilogue::Glu { act: &act },
                &rec,
                false,
            )
            .unwrap();
            let reference: Vec<f64> = (0..rows[0])
                .map(|r| {
                    let (gv, uv) = (dot64(&wf[0][r], &xn), dot64(&w2f[r], &xn));
                    gv / (1.0 + (-gv).exp()) * uv
                })
                .collect();
            check(
                &name("glu act"),
                &dev.download_f32(&act, rows[0]).unwrap(),
                &reference,
                tol,
            );

            // Residual add, no norm: acc += W x.
            let acc0 = rng.vec(rows[1]);
            let accd = dev.upload_f32(&acc0, MemKind::Scratch).unwrap();
            let prods = [MatVecOut {
                mat: mat(1),
                bias: None,
                out: &outs[1],
            }];
            dev.fused_matvec(
                &xd,
                k,
                None,
                &prods,
                Epilogue::Add { acc: &accd },
                &rec,
                false,
            )
            .unwrap();
            let reference: Vec<f64> = (0..rows[1])
                .map(|r| acc0[r] as f64 + dot64(&wf[1][r], &xr))
                .collect();
            check(
                &name("add"),
                &dev.download_f32(&accd, rows[1]).unwrap(),
                &reference,
                tol,
            );
        }
    }
    // A weight buffer without the padding is refused, not read past its end.
    let w = random_tensor(GgmlType::Q8_0, 4, 64, &mut rng);
    let wd = dev.upload(&w, MemKind::Weights).unwrap();
    let xd = dev.upload_f32(&rng.vec(64), MemKind::Scratch).unwrap();
    let od = dev.alloc(16, MemKind::Scratch).unwrap();
    let prods = [MatVecOut {
        mat: MatRef {
            ty: GgmlType::Q8_0,
            w: &wd,
            rows: 4,
            cols: 64,
        },
        bias: None,
        out: &od,
    }];
    let rec = dev
        .alloc(CudaDevice::input_record_bytes(64), MemKind::Scratch)
        .unwrap();
    let r = dev.fused_matvec(&xd, 64, None, &prods, Epilogue::Plain, &rec, false);
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
}

// Products with more rows than the grid has warps, so that each warp streams several rows
// (rounds) through its ring of staged pieces, rows split between warps (the down projection's
// shape: few rows, long ones) and whole rows per warp (gate/up's: many short rows); formats
// mixed in one product (the q/k/v product with a Q6_K v), and a SwiGLU whose gate and up
// differ in format (run as two plain products and the SwiGLU). Same tolerance as above.
// The mat-vecs of several rows (a batched step's sequences): each of n rows through
// `fused_matvec_rows` (launches of 8, 4, 2 and 1 inputs for n = 3, 8, 16) against the same row
// through the one-row `fused_matvec`, for every type and epilogue, RMSNorm folded in. The same
// f32 sums per output: tolerance 1e-6 relative (in practice bit for bit; the compiler may
// order a kernel's sums differently), far below what a row's product landing in another row,
// a wrong stride or a missed row (NaN poison) gives.
#[test]
fn fused_matvec_rows_equal_single_rows() {
    use llorch::backend::cuda::{Epilogue, MatRef, MatVecOut, Norm};
    let Some(dev) = device("fused_matvec_rows_equal_single_rows") else {
        return;
    };
    let mut rng = Rng(0x5EED_0F17);
    let k = 1280;
    let rows = [133usize, 64];
    let upload = |v: &[f32]| dev.upload_f32(v, MemKind::Scratch).unwrap();
    for ty in TYPES {
        let (wd, _): (Vec<_>, Vec<_>) = rows
            .iter()
            .map(|&r| random_matrix(&dev, ty, r, k, &mut rng))
            .unzip();
        let mat = |i: usize| MatRef {
            ty,
            w: &wd[i],
            rows: rows[i],
            cols: k,
        };
        let g: Vec<f32> = rng.vec(k).iter().map(|v| 1.0 + 0.5 * v).collect();
        let (gd, bd) = (upload(&g), upload(&rng.vec(rows[0])));
        for n in [3usize, 8, 16] {
            let x = rng.vec(n * k);
            let acc0 = rng.vec(n * rows[0]);
            let xd = upload(&x);
            let rec = dev
                .alloc(n * CudaDevice::input_record_bytes(k), MemKind::Scratch)
                .unwrap();
            // Epilogue e (0 plain, 1 SwiGLU, 2 add into `a0`) over the m rows of xd (one or
            // all n): the outputs and normed (act, acc) downloaded, m rows of their widths.
            let r0 = rows[0];
            let run = |e: usize, xd: &llorch::backend::cuda::DeviceBuffer, m: usize, a0: &[f32]| {
                // The SwiGLU's gate and up: matrix 0 twice (equal rows).
                let widths = if e == 1 { [r0, r0] } else { rows };
                let outs: Vec<_> = widths.iter().map(|&r| poisoned(&dev, m * r)).collect();
                let normed = poisoned(&dev, m * k);
                let act = poisoned(&dev, m * rows[0]);
                let acc = upload(a0);
                let norm = Norm {
                    weight: &gd,
                    eps: 1e-6,
                    normed: Some(&normed),
                };
                let prods: Vec<MatVecOut> = (0..2)
                    .map(|i| MatVecOut {
                        mat: mat(if e == 1 { 0 } else { i }),
                        bias: (e == 0 && i == 0).then_some(&bd),
                        out: &outs[i],
                    })
                    .collect();
                let (prods, norm, epi) = match e {
                    0 => (&prods[..], Some(norm), Epilogue::Plain),
                    1 => (&prods[..], Some(norm), Epilogue::Glu { act: &act }),
                    _ => (&prods[..1], None, Epilogue::Add { acc: &acc }),
                };
                dev.fused_matvec_rows(xd, m, k, norm, prods, epi, &rec, false)
                    .unwrap();
                let mut got = Vec::new();
                for (o, w) in outs.iter().zip(widths).take(prods.len()) {
                    got.push(dev.download_f32(o, m * w).unwrap());
                }
                match e {
                    1 => got.push(dev.download_f32(&act, m * rows[0]).unwrap()),
                    2 => got.push(dev.download_f32(&acc, m * rows[0]).unwrap()),
                    _ => got.push(dev.download_f32(&normed, m * k).unwrap()),
                }
                got
            };
            for e in 0..3 {
                let all = run(e, &xd, n, &acc0);
                for row in 0..n {
                    let xr = upload(&x[row * k..(row + 1) * k]);
                    let one = run(e, &xr, 1, &acc0[row * r0..(row + 1) * r0]);
                    for (j, (a, b)) in all.iter().zip(&one).enumerate() {
                        let w = b.len();
                        let got = &a[row * w..(row + 1) * w];
                        let big = b.iter().fold(1f32, |m, v| m.max(v.abs()));
                        let bad = got
                            .iter()
                            .zip(b)
                            .filter(|(p, q)| {
                                (*p - *q).abs() > 1e-6 * big || p.is_nan() || q.is_nan()
                            })
                            .count();
                        assert_eq!(
                            bad,
                            0,
                            "{} n={n} epilogue {e} output {j} row {row}: {bad} of {w} differ",
                            ty.name()
                        );
                    }
                }
            }
        }
        let _ = std::io::stderr()
            .write_all(format!("  {}: rows equal single rows\n", ty.name()).as_bytes());
    }
}

#[test]
fn fused_matvec_many_rounds_and_mixed_formats() {
    use llorch::backend::cuda::{Epilogue, MatRef, MatVecOut};
    let Some(dev) = device("fused_matvec_many_rounds_and_mixed_formats") else {
        return;
    };
    let mut rng = Rng(0x5EED_00F2);
    // (formats, rows of each, k): 3 formats in one plain product, rows over the 3168 warps
    // of one H200 wave.
    // The last two: the q/k/v formats of a Q4_K_M file (kernels of their own), at the 7B's and
    // the 0.5B's shapes.
    let cases: [(&[GgmlType], usize, usize); 6] = [
        (
            &[GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0],
            3000,
            1280,
        ),
        (&[GgmlType::Q6_K], 4000, 4864),
        (&[GgmlType::Q5_0, GgmlType::Q4_K], 2600, 2048),
        (&[GgmlType::Q4_K, GgmlType::Q6_K], 7000, 1024),
        (
            &[GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q4_K],
            3500,
            3584,
        ),
        (&[GgmlType::Q5_0, GgmlType::Q5_0, GgmlType::Q8_0], 1500, 896),
    ];
    for (ci, &(types, rows, k)) in cases.iter().enumerate() {
        let (wd, wf): (Vec<_>, Vec<_>) = types
            .iter()
            .map(|&t| random_matrix(&dev, t, rows, k, &mut rng))
            .unzip();
        let x = rng.vec(k);
        let xd = dev.upload_f32(&x, MemKind::Scratch).unwrap();
        let xr: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let rec = dev
            .alloc(CudaDevice::input_record_bytes(k), MemKind::Scratch)
            .unwrap();
        let outs: Vec<_> = types.iter().map(|_| poisoned(&dev, rows)).collect();
        let prods: Vec<MatVecOut> = (0..types.len())
            .map(|i| MatVecOut {
                mat: MatRef {
                    ty: types[i],
                    w: &wd[i],
                    rows,
                    cols: k,
                },
                bias: None,
                out: &outs[i],
            })
            .collect();
        let refs: Vec<Vec<f64>> = wf
            .iter()
            .map(|m| m.iter().map(|w| dot64(w, &xr)).collect())
            .collect();
        let name = |what: &str| format!("case {ci} {what} ({rows} rows, k={k})");
        if types.len() == 2 && ci == 3 {
            // Gate and up of two formats.
            let act = dev.alloc(rows * 4, MemKind::Scratch).unwrap();
            dev.fused_matvec(
                &xd,
                k,
                None,
                &prods,
                Epilogue::Glu { act: &act },
                &rec,
                false,
            )
            .unwrap();
            let reference: Vec<f64> = (0..rows)
                .map(|r| {
                    let (g, u) = (refs[0][r], refs[1][r]);
                    g / (1.0 + (-g).exp()) * u
                })
                .collect();
            check(
                &name("glu act"),
                &dev.download_f32(&act, rows).unwrap(),
                &reference,
                1e-4,
            );
            continue;
        }
        dev.fused_matvec(&xd, k, None, &prods, Epilogue::Plain, &rec, false)
            .unwrap();
        for (i, t) in types.iter().enumerate() {
            let got = dev.download_f32(&outs[i], rows).unwrap();
            check(&name(&format!("plain {}", t.name())), &got, &refs[i], 1e-4);
        }
        // The same product, gated (gate = up = matrix 0) and added into a residual.
        let act = dev.alloc(rows * 4, MemKind::Scratch).unwrap();
        let pair = [prods[0], prods[0]];
        dev.fused_matvec(
            &xd,
            k,
            None,
            &pair,
            Epilogue::Glu { act: &act },
            &rec,
            false,
        )
        .unwrap();
        let reference: Vec<f64> = refs[0]
            .iter()
            .map(|&g| g / (1.0 + (-g).exp()) * g)
            .collect();
        check(
            &name("glu act"),
            &dev.download_f32(&act, rows).unwrap(),
            &reference,
            1e-4,
        );
        let acc0 = rng.vec(rows);
        let accd = dev.upload_f32(&acc0, MemKind::Scratch).unwrap();
        dev.fused_matvec(
            &xd,
            k,
            None,
            &prods[..1],
            Epilogue::Add { acc: &accd },
            &rec,
            false,
        )
        .unwrap();
        let reference: Vec<f64> = (0..rows).map(|r| acc0[r] as f64 + refs[0][r]).collect();
        check(
            &name("add"),
            &dev.download_f32(&accd, rows).unwrap(),
            &reference,
            1e-4,
        );
    }
}

// The router's picks on the GPU (moe_route) against the CPU backend's definition (a stable
// sort of the biased logits under f32 total order, NaN as -inf; the softmax of the picked
// logits relative to the first): ids and biased logits exact, weights within 1e-6 (expf); then
// an expert's rows gathered and weighed back (moe_gather / moe_scatter) exactly as on the host
// (up to the FMA contraction of w * y + acc: 1e-6).
#[test]
fn moe_route_gather_and_scatter() {
    let Some(dev) = device("moe_route_gather_and_scatter") else {
        return;
    };
    let mut rng = Rng(0x5EED_00E2);
    for &(n_tok, n_exp, k) in &[
        (37usize, 32usize, 4usize),
        (5, 4, 2),
        (9, 256, 8),
        (3, 33, 1),
    ] {
        let mut logits: Vec<f32> = rng.vec(n_tok * n_exp).iter().map(|v| v * 4.0).collect();
        for t in 0..n_tok {
            let r = &mut logits[t * n_exp..(t + 1) * n_exp];
            r[3 % n_exp] = r[1 % n_exp]; // a tie
            if t % 3 == 1 {
                r[rng.below(n_exp)] = f32::NAN;
            }
        }
        let bias = rng.vec(n_exp);
        let ld = dev.upload_f32(&logits, MemKind::Scratch).unwrap();
        let bd = dev.upload_f32(&bias, MemKind::Scratch).unwrap();
        let (idd, wd) = (poisoned(&dev, n_tok * k), poisoned(&dev, n_tok * k));
        dev.moe_route(&ld, Some(&bd), n_tok, n_exp, k, &idd, &wd)
            .unwrap();
        let got_l = dev.download_f32(&ld, n_tok * n_exp).unwrap();
        let got_ids = dev.download_i32(&idd, n_tok * k).unwrap();
        let got_w = dev.download_f32(&wd, n_tok * k).unwrap();
        for t in 0..n_tok {
            let row: Vec<f32> = (0..n_exp)
                .map(|e| logits[t * n_exp + e] + bias[e])
                .collect();
            // Bit for bit, NaN for NaN (the GPU's NaN has its own payload).
            let same = row
                .iter()
                .zip(&got_l[t * n_exp..])
                .all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
            assert!(same, "moe_route {n_exp}: biased logits of token {t}");
            let key = |i: usize| {
                if row[i].is_nan() {
                    f32::NEG_INFINITY
                } else {
                    row[i]
                }
            };
            let mut order: Vec<usize> = (0..n_exp).collect();
            order.sort_by(|&a, &b| key(b).total_cmp(&key(a)));
            let e: Vec<f64> = order[..k]
                .iter()
                .map(|&i| (row[i] as f64 - row[order[0]] as f64).exp())
                .collect();
            let sum: f64 = e.iter().sum();
            for j in 0..k {
                assert_eq!(
                    got_ids[t * k + j],
                    order[j] as i32,
                    "moe_route top-{k} of {n_exp}: token {t} pick {j}"
                );
                let (g, w) = (got_w[t * k + j] as f64, e[j] / sum);
                assert!((g - w).abs() <= 1e-6, "weight {t}/{j}: {g} vs {w}");
            }
        }
        // Each expert's picks in token order, gathered, doubled, and weighed back.
        let width = 300;
        let x = rng.vec(n_tok * width);
        let xd = dev.upload_f32(&x, MemKind::Scratch).unwrap();
        let mut order = Vec::new();
        for e in 0..n_exp as i32 {
            order.extend(
                (0..n_tok * k)
                    .filter(|&i| got_ids[i] == e)
                    .map(|i| i as i32),
            );
        }
        let pd = upload_i32(&dev, &order);
        let out = dev.alloc(n_tok * width * 4, MemKind::Scratch).unwrap();
        dev.zero_async(&out).unwrap();
        let mut want = vec![0f32; n_tok * width];
        let mut first = 0;
        while first < order.len() {
            let e = got_ids[order[first] as usize];
            let c = order[first..]
                .iter()
                .take_while(|&&i| got_ids[i as usize] == e)
                .count();
            let xg = poisoned(&dev, c * width);
            dev.moe_gather(&xd, &pd, first, c, k, width, &xg).unwrap();
            let g = dev.download_f32(&xg, c * width).unwrap();
            let y: Vec<f32> = g.iter().map(|v| 2.0 * v + e as f32).collect();
            for (j, &i) in order[first..first + c].iter().enumerate() {
                let t = i as usize / k;
                assert_eq!(
                    &g[j * width..(j + 1) * width],
                    &x[t * width..(t + 1) * width]
                );
                for d in 0..width {
                    want[t * width + d] += got_w[i as usize] * y[j * width + d];
                }
            }
            let yd = dev.upload_f32(&y, MemKind::Scratch).unwrap();
            dev.moe_scatter(&yd, &pd, first, c, &wd, k, width, &out)
                .unwrap();
            first += c;
        }
        let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
        check(
            &format!("moe_scatter top-{k} of {n_exp}"),
            &dev.download_f32(&out, n_tok * width).unwrap(),
            &want,
            1e-6,
        );
    }
    // Bad arguments are errors, not launches.
    let b = dev.alloc(1024, MemKind::Scratch).unwrap();
    for (n_exp, k) in [(0, 1), (257, 4), (4, 5), (32, 9), (32, 0)] {
        let r = dev.moe_route(&b, None, 1, n_exp, k, &b, &b);
        assert!(
            matches!(r, Err(Error::InvalidArgument(_))),
            "{n_exp} {k}: {r:?}"
        );
    }
}

// The mixture-of-experts decode products (expert_matvec, expert_combine): GPT-OSS 20B's
// shapes (32 experts of 2880 x 2880, MXFP4, top-4 with one expert picked twice) and small
// Q4_K / Q8_0 ones; gate and up (with biases) on one input, then down on each expert's own
// input, then the weighted sum into a residual. Reference: the CPU's dequantization of the
// selected experts, f64 dots with the unquantized inputs: the inputs are quantized to 16 bits
// a value as in fused_matvec, same tolerance 1e-4. Every expert that is not selected holds
// blocks that decode to infinities (MXFP4: exponent 255 with code 12; else f16 infinity
// scales), so a read of any of them would show. An id out of range gives NaN rows.
#[test]
fn expert_matvec_reads_only_the_selected_experts() {
    use llorch::backend::cuda::{ExpertInput, ExpertOut, ExpertsRef, Norm};
    let Some(dev) = device("expert_matvec_reads_only_the_selected_experts") else {
        return;
    };
    let mut rng = Rng(0x5EED_00E1);
    let cases: [(GgmlType, usize, usize, usize, &[i32]); 4] = [
        (GgmlType::MXFP4, 32, 2880, 2880, &[7, 30, 7, 0]),
        (GgmlType::MXFP4, 8, 100, 640, &[5, 1, 2, 3, 4, 0, 6, 7]),
        (GgmlType::Q4_K, 6, 300, 1024, &[5, 2]),
        (GgmlType::Q8_0, 4, 700, 896, &[3]),
    ];
    for &(ty, n_expert, rows, k, ids) in &cases {
        let n_sel = ids.len();
        let rb = ty.bytes_for(k as u64).unwrap() as usize;
        let eb = rb * rows;
        let selected = |e: usize| ids.contains(&(e as i32));
        // Stacked tensors: selected experts random, the others infinities.
        let stacked = |rng: &mut Rng| -> (Vec<u8>, Vec<Vec<Vec<f32>>>) {
            let mut w = vec![0u8; n_expert * eb];
            let mut rows_f = vec![Vec::new(); n_expert];
            for e in 0..n_expert {
                let part = &mut w[e * eb..(e + 1) * eb];
                if selected(e) {
                    part.copy_from_slice(&random_tensor(ty, rows, k, rng));
                    rows_f[e] = dequant_rows(ty, part, rows, k);
                } else {
                    for b in part.chunks_mut(ty.type_size()) {
                        match ty {
                            GgmlType::MXFP4 => b.fill(0xFF),
                            GgmlType::Q4_K => {
                                put_f16(b, 0, f32::INFINITY);
                                put_f16(b, 2, f32::INFINITY);
                            }
                            _ => put_f16(b, 0, f32::INFINITY),
                        }
                    }
                }
            }
            (w, rows_f)
        };
        let (gw, gf) = stacked(&mut rng);
        let (uw, uf) = stacked(&mut rng);
        let (dw, df) = stacked(&mut rng);
        let gd = upload_weights(&dev, &gw);
        let ud = upload_weights(&dev, &uw);
        let dd = upload_weights(&dev, &dw);
        let bg = rng.vec(n_expert * rows);
        let bu = rng.vec(n_expert * rows);
        let bgd = dev.upload_f32(&bg, MemKind::Scratch).unwrap();
        let bud = dev.upload_f32(&bu, MemKind::Scratch).unwrap();
        let idd = upload_i32(&dev, ids);
        // Tables of the experts of each stacked tensor (a model's point at a buffer each).
        let table = |b, stride| dev.stacked_expert_table(b, n_expert, stride).unwrap();
        let (gt, ut, dt) = (table(&gd, eb), table(&ud, eb), table(&dd, eb));
        let (bgt, but) = (table(&bgd, rows * 4), table(&bud, rows * 4));
        let experts = |table| ExpertsRef {
            ty,
            table,
            rows,
            cols: k,
        };
        let name = |what: &str| {
            format!(
                "experts {} {n_expert}x{rows}x{k} top-{n_sel} {what}",
                ty.name()
            )
        };

        // Gate and up on one input, normalized on the way (prep_input with the norm).
        let x = rng.vec(k);
        let g: Vec<f32> = rng.vec(k).iter().map(|v| 1.0 + 0.5 * v).collect();
        let xd = dev.upload_f32(&x, MemKind::Scratch).unwrap();
        let gnd = dev.upload_f32(&g, MemKind::Scratch).unwrap();
        let rec = dev
            .alloc(CudaDevice::input_record_bytes(k), MemKind::Scratch)
            .unwrap();
        let norm = Norm {
            weight: &gnd,
            eps: 1e-5,
            normed: None,
        };
        dev.prep_input(&xd, k, Some(norm), &rec).unwrap();
        let xn = rmsnorm64(&x, &g, 1e-5);
        let (og, ou) = (poisoned(&dev, n_sel * rows), poisoned(&dev, n_sel * rows));
        let prods = [
            ExpertOut {
                experts: experts(&gt),
                bias: Some(&bgt),
                out: &og,
            },
            ExpertOut {
                experts: experts(&ut),
                bias: Some(&but),
                out: &ou,
            },
        ];
        dev.expert_matvec(&idd, n_sel, ExpertInput::Shared(&rec), &prods)
            .unwrap();
        for (what, out, wf, b) in [("gate", &og, &gf, &bg), ("up", &ou, &uf, &bu)] {
            let got = dev.download_f32(out, n_sel * rows).unwrap();
            let xn = &xn;
            let reference: Vec<f64> = ids
                .iter()
                .flat_map(|&e| {
                    let e = e as usize;
                    (0..rows).map(move |r| dot64(&wf[e][r], xn) + b[e * rows + r] as f64)
                })
                .collect();
            check(&name(what), &got, &reference, 1e-4);
        }

        // Down on each expert's own input (back to back), then the weighted sum + residual.
        let xs = rng.vec(n_sel * k);
        let xsd = dev.upload_f32(&xs, MemKind::Scratch).unwrap();
        let recs = dev
            .alloc(CudaDevice::input_record_bytes(n_sel * k), MemKind::Scratch)
            .unwrap();
        dev.prep_input(&xsd, n_sel * k, None, &recs).unwrap();
        // The down product with the given ids, into a fresh poisoned buffer.
        let run_down = |ids: &llorch::backend::cuda::DeviceBuffer| {
            let out = poisoned(&dev, n_sel * rows);
            let prods = [ExpertOut {
                experts: experts(&dt),
                bias: None,
                out: &out,
            }];
            dev.expert_matvec(ids, n_sel, ExpertInput::PerExpert(&recs), &prods)
                .unwrap();
            out
        };
        let od = run_down(&idd);
        let down: Vec<f64> = ids
            .iter()
            .enumerate()
            .flat_map(|(s, &e)| {
                let xr: Vec<f64> = xs[s * k..(s + 1) * k].iter().map(|&v| v as f64).collect();
                (0..rows)
                    .map(|r| dot64(&df[e as usize][r], &xr))
                    .collect::<Vec<_>>()
            })
            .collect();
        check(
            &name("down"),
            &dev.download_f32(&od, n_sel * rows).unwrap(),
            &down,
            1e-4,
        );
        let wts = rng.vec(n_sel);
        let wd = dev.upload_f32(&wts, MemKind::Scratch).unwrap();
        let acc0 = rng.vec(rows);
        let accd = dev.upload_f32(&acc0, MemKind::Scratch).unwrap();
        let y = poisoned(&dev, rows);
        dev.expert_combine(&od, &wd, n_sel, rows, &y, Some(&accd))
            .unwrap();
        let reference: Vec<f64> = (0..rows)
            .map(|r| (0..n_sel).map(|s| wts[s] as f64 * down[s * rows + r]).sum())
            .collect();
        check(
            &name("combine"),
            &dev.download_f32(&y, rows).unwrap(),
            &reference,
            1e-4,
        );
        let with_acc: Vec<f64> = (0..rows).map(|r| acc0[r] as f64 + reference[r]).collect();
        check(
            &name("combine + residual"),
            &dev.download_f32(&accd, rows).unwrap(),
            &with_acc,
            1e-4,
        );

        // An id out of range: NaN rows for its slot, the other slots as before.
        let mut bad_ids = ids.to_vec();
        bad_ids[n_sel - 1] = n_expert as i32;
        let bad_idd = upload_i32(&dev, &bad_ids);
        let got = dev.download_f32(&run_down(&bad_idd), n_sel * rows).unwrap();
        assert!(
            got[(n_sel - 1) * rows..].iter().all(|v| v.is_nan()),
            "{}: the slot of an id out of range is not NaN",
            name("bad id")
        );
        // (With one selected expert there is no other slot to compare.)
        if n_sel > 1 {
            check(
                &name("other slots beside a bad id"),
                &got[..(n_sel - 1) * rows],
                &down[..(n_sel - 1) * rows],
                1e-4,
            );
        }
    }

    // Bad arguments are errors, not launches.
    // 4 experts of 2 rows of 64 MXFP4 values (34 bytes a row) and the padding, exactly.
    let w = dev
        .upload(&[0u8; 4 * 2 * 34 + 16], MemKind::Weights)
        .unwrap();
    let ids = dev.upload(&[0u8; 9 * 4], MemKind::Scratch).unwrap();
    let rec = dev
        .alloc(CudaDevice::input_record_bytes(64), MemKind::Scratch)
        .unwrap();
    let out = dev.alloc(9 * 64 * 4, MemKind::Scratch).unwrap();
    let tables: Vec<_> = [(2, 4 * 34), (4, 2 * 34), (5, 2 * 34)]
        .iter()
        .map(|&(n, stride)| dev.stacked_expert_table(&w, n, stride).unwrap())
        .collect();
    let ex = |ty, n_expert: usize, rows, cols| ExpertOut {
        experts: ExpertsRef {
            ty,
            table: tables.iter().find(|t| t.len() == n_expert).unwrap(),
            rows,
            cols,
        },
        bias: None,
        out: &out,
    };
    let input = ExpertInput::Shared(&rec);
    let ok = [ex(GgmlType::MXFP4, 4, 2, 64)];
    dev.expert_matvec(&ids, 2, input, &ok).unwrap();
    for (n_sel, prods, want) in [
        (0usize, &ok[..], "selected"),
        (9, &ok[..], "selected"),
        (2, &[][..], "no product"),
        (2, &[ex(GgmlType::F32, 4, 2, 64)][..], "quantized"),
        (2, &[ex(GgmlType::MXFP4, 5, 2, 64)][..], "padding"),
        (2, &[ex(GgmlType::MXFP4, 4, 2, 48)][..], "32"),
        (
            2,
            &[ex(GgmlType::MXFP4, 4, 2, 64), ex(GgmlType::MXFP4, 2, 4, 64)][..],
            "product 1",
        ),
        (2, &[ok[0], ok[0], ok[0]][..], "1 or 2"),
    ] {
        let r = dev.expert_matvec(&ids, n_sel, input, prods);
        let msg = format!("{r:?}");
        assert!(
            matches!(r, Err(Error::InvalidArgument(_) | Error::Unsupported(_)))
                && msg.contains(want),
            "n_sel {n_sel}, {} products: {msg}",
            prods.len()
        );
    }
    let r = dev.expert_matvec(&ids, 2, ExpertInput::PerExpert(&rec), &ok);
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
}

// rope_kv + attention_decode against the unfused rope, kv_store and the f64 attention
// reference; the position comes from device memory. Lengths below, at and far above the
// number of key slices (empty slices must add nothing).
#[test]
fn rope_kv_and_split_attention() {
    use llorch::backend::cuda::attention_scratch_floats;
    let Some(dev) = device("rope_kv_and_split_attention") else {
        return;
    };
    let mut rng = Rng(0x5EED_00F2);
    let cases = [
        (14usize, 2usize, 64usize, 0usize, true),
        (14, 2, 64, 5, true),
        (28, 4, 128, 31, true),
        (8, 8, 64, 300, false),
        (4, 1, 256, 1000, true),
        // The staged scan of the head-size kernels: 128 keys in one block (four whole
        // chunks), 129 in three slices of partial chunks, merged slices at 128, long contexts.
        (28, 4, 128, 127, true),
        (14, 2, 64, 128, true),
        (28, 4, 128, 700, true),
        (2, 1, 64, 2000, true),
    ];
    // Every case over an f16 and an f32 cache (the `_f32kv` kernels).
    let both_types = cases.iter().flat_map(|c| [(c, false), (c, true)]);
    for (&(n_heads, n_kv, hd, pos, neox), f32_kv) in both_types {
        let max_ctx = pos + 4;
        let total = pos + 1;
        let per = n_kv * hd;
        let k_all = rng.vec(total * per);
        let v_all = rng.vec(total * per);
        let q = rng.vec(n_heads * hd);
        let p = RopeParams {
            rot_dim: hd,
            base: 1e6,
            pos_scale: 1.0,
            neox,
        };
        // The reference: unfused kernels for RoPE of the new token, f64 attention.
        let posd = dev.upload_i32(&[pos as i32], MemKind::Scratch).unwrap();
        let mut qr = dev.upload_f32(&q, MemKind::Scratch).unwrap();
        let mut kr = dev
            .upload_f32(&k_all[pos * per..], MemKind::Scratch)
            .unwrap();
        dev.rope(&mut qr, &posd, 1, n_heads, hd, p).unwrap();
        dev.rope(&mut kr, &posd, 1, n_kv, hd, p).unwrap();
        let q_roped = dev.download_f32(&qr, q.len()).unwrap();
        let k_roped = dev.download_f32(&kr, per).unwrap();
        let mut k_ref = k_all.clone();
        k_ref[pos * per..].copy_from_slice(&k_roped);

        // A cache poisoned everywhere but at positions 0..pos (the earlier tokens).
        let cache_with_history = || {
            let c = dev.alloc_kv_layer(n_kv, hd, max_ctx, f32_kv).unwrap();
            c.fill(&dev, POISON).unwrap();
            if pos > 0 {
                let kd = dev
                    .upload_f32(&k_all[..pos * per], MemKind::Scratch)
                    .unwrap();
                let vd = dev
                    .upload_f32(&v_all[..pos * per], MemKind::Scratch)
                    .unwrap();
                dev.kv_store(&kd, &vd, pos, &c.layer(0), 0).unwrap();
            }
            c
        };
        let kv = cache_with_history();
        let cache = kv.layer(0);
        let qd = dev.upload_f32(&q, MemKind::Scratch).unwrap();
        let kd = dev
            .upload_f32(&k_all[pos * per..], MemKind::Scratch)
            .unwrap();
        let vd = dev
            .upload_f32(&v_all[pos * per..], MemKind::Scratch)
            .unwrap();
        dev.rope_kv(&qd, &kd, &vd, &cache, &posd, n_heads, p)
            .unwrap();
        let what = format!("h={n_heads} kv={n_kv} hd={hd} pos={pos} neox={neox} f32_kv={f32_kv}");
        let exact = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x == y);
        assert!(
            exact(&dev.download_f32(&qd, q.len()).unwrap(), &q_roped),
            "rope_kv q {what}"
        );
        assert!(
            exact(&dev.download_f32(&kd, per).unwrap(), &k_roped),
            "rope_kv k {what}"
        );

        let part = dev
            .alloc(attention_scratch_floats(n_heads, hd) * 4, MemKind::Scratch)
            .unwrap();
        let mut count = dev.alloc(n_heads * 4, MemKind::Scratch).unwrap();
        dev.fill_bytes(&mut count, 0).unwrap();
        let mut od = dev.alloc(q.len() * 4, MemKind::Scratch).unwrap();
        let scale = 1.0 / (hd as f32).sqrt();
        let reference = attention_ref(
            &q_roped, &k_ref, &v_all, 1, n_heads, n_kv, hd, pos, scale, 0, None, f32_kv,
        );
        // GPT-OSS's sinks (below, among and above the scores) in the third round.
        let sinks: Vec<f32> = (0..n_heads).map(|h| (h % 3) as f32 * 3.0 - 3.0).collect();
        let sinks_d = dev.upload_f32(&sinks, MemKind::Scratch).unwrap();
        let sink_ref = attention_ref(
            &q_roped,
            &k_ref,
            &v_all,
            1,
            n_heads,
            n_kv,
            hd,
            pos,
            scale,
            0,
            Some(&sinks),
            f32_kv,
        );
        for round in 0..3 {
            // Twice: the counters must be back at zero after each launch.
            let (skd, want) = if round == 2 {
                (Some(&sinks_d), &sink_ref)
            } else {
                (None, &reference)
            };
            dev.fill_bytes(&mut od, POISON).unwrap();
            dev.attention_decode(
                &qd, &cache, &posd, n_heads, scale, 0, &part, &count, &od, None, None, skd,
            )
            .unwrap();
            let got = dev.download_f32(&od, q.len()).unwrap();
            check(
                &format!("attention_decode {what} round {round}"),
                &got,
                want,
                1e-5,
            );
        }
        assert!(dev
            .download_i32(&count, n_heads)
            .unwrap()
            .iter()
            .all(|&c| c == 0));

        // RoPE folded into the attention: q and the new k unrotated, the new position not yet
        // cached. The output must match the same reference and the cache row must be the one
        // rope_kv stored, bit for bit.
        let rope_cache = kv.bytes(&dev).unwrap();
        let kv2 = cache_with_history();
        let q0 = dev.upload_f32(&q, MemKind::Scratch).unwrap();
        let k0 = dev
            .upload_f32(&k_all[pos * per..], MemKind::Scratch)
            .unwrap();
        dev.fill_bytes(&mut od, POISON).unwrap();
        let new_kv = llorch::backend::cuda::NewKv {
            k: &k0,
            v: &vd,
            rope: p,
        };
        dev.attention_decode(
            &q0,
            &kv2.layer(0),
            &posd,
            n_heads,
            scale,
            0,
            &part,
            &count,
            &od,
            None,
            Some(new_kv),
            None,
        )
        .unwrap();
        let got = dev.download_f32(&od, q.len()).unwrap();
        check(
            &format!("attention_decode with RoPE {what}"),
            &got,
            &reference,
            1e-5,
        );
        assert!(
            kv2.bytes(&dev).unwrap() == rope_cache,
            "attention_decode with RoPE: cache differs from rope_kv's {what}"
        );
        assert_eq!(
            dev.download_f32(&q0, q.len()).unwrap(),
            q,
            "q left as it was"
        );
    }
}

// ---------- batched products on the tensor cores (kernels/mmq.cu) ----------

/// `mmq_rows` (int8 mma of the quants with the 16-bit chunk records) over 8..128 inputs,
/// every format with a kernel and the two q/k/v pairs of a Q4_K_M file, each epilogue:
/// - each input's outputs against the one-input fused mat-vec on that input: the same
///   integers (exact int32 dot products of the same quants and records), summed in another
///   f32 order (the mat-vec's lanes take quarter chunks): within 2e-6 of Σ|w·x| (per chunk a
///   few roundings of 2^-24, one f32 addition per chunk: 32 chunks here);
/// - against f64 of the normalized input: the records are off by at most max|x|/64516 a
///   value, ~1e-5 of the dot's size for these inputs: 1e-4 as `fused_matvec_all_types_and_
///   epilogues`;
/// - batch invariance: input 0's outputs bit for bit the same for every input count.
#[test]
fn mmq_products_equal_single_rows_and_reference() {
    use llorch::backend::cuda::{mmq_supported, DeviceBuffer, Epilogue, MatRef, MatVecOut, Norm};
    use GgmlType::*;
    let Some(dev) = device("mmq_products_equal_single_rows_and_reference") else {
        return;
    };
    let mut rng = Rng(0x5EED_0A17);
    let k = 1024;
    let upload = |v: &[f32]| dev.upload_f32(v, MemKind::Scratch).unwrap();
    // Formats of up to three matrices (plain epilogue) and their rows; the first matrix also
    // takes the SwiGLU (as gate and up) and the add epilogues.
    let cases: [(&[GgmlType], &[usize]); 7] = [
        (&[Q4_1], &[300]),
        (&[Q5_0, Q5_0], &[300, 72]),
        (&[Q8_0, Q8_0], &[200, 136]),
        (&[Q4_K, Q4_K], &[300, 40]),
        (&[Q6_K], &[330]),
        (&[Q5_0, Q5_0, Q8_0], &[256, 64, 64]),
        (&[Q4_K, Q4_K, Q6_K], &[200, 40, 40]),
    ];
    let inputs = [8usize, 9, 33, 64, 65, 128];
    let n_max = 128;
    let x = rng.vec(n_max * k);
    let g: Vec<f32> = rng.vec(k).iter().map(|v| 1.0 + 0.5 * v).collect();
    let gd = upload(&g);
    let normed64: Vec<Vec<f64>> = (0..n_max)
        .map(|i| rmsnorm64(&x[i * k..(i + 1) * k], &g, 1e-6))
        .collect();
    let rec = dev
        .alloc(n_max * CudaDevice::input_record_bytes(k), MemKind::Scratch)
        .unwrap();
    for (types, rows) in cases {
        let mats: Vec<(DeviceBuffer, Vec<Vec<f32>>)> = types
            .iter()
            .zip(rows)
            .map(|(&t, &r)| random_matrix(&dev, t, r, k, &mut rng))
            .collect();
        let mat = |i: usize| MatRef {
            ty: types[i],
            w: &mats[i].0,
            rows: rows[i],
            cols: k,
        };
        let bias = rng.vec(rows[0]);
        let bd = upload(&bias);
        let acc0 = rng.vec(n_max * rows[0]);
        let glu_ok = mmq_supported(&types[..1], true);
        let mut first: [Option<Vec<u32>>; 3] = Default::default();
        for n in inputs {
            // Epilogue e (0 plain + bias, normed; 1 SwiGLU of matrix 0 twice; 2 add into acc0)
            // over m inputs starting at input `at`, through mmq (`mmq`) or the one-input
            // kernel: the outputs, then act or acc.
            let run = |e: usize, m: usize, at: usize, mmq: bool| -> Vec<Vec<f32>> {
                let widths: Vec<usize> = match e {
                    0 => rows.to_vec(),
                    1 => vec![rows[0], rows[0]],
                    _ => vec![rows[0]],
                };
                let outs: Vec<_> = widths.iter().map(|&r| poisoned(&dev, m * r)).collect();
                let normed = poisoned(&dev, m * k);
                let act = poisoned(&dev, m * rows[0]);
                let acc = upload(&acc0[at * rows[0]..(at + m) * rows[0]]);
                let xs = upload(&x[at * k..(at + m) * k]);
                let norm = Norm {
                    weight: &gd,
                    eps: 1e-6,
                    normed: Some(&normed),
                };
                let prods: Vec<MatVecOut> = widths
                    .iter()
                    .enumerate()
                    .map(|(i, _)| MatVecOut {
                        mat: mat(if e == 1 { 0 } else { i }),
                        bias: (e == 0 && i == 0).then_some(&bd),
                        out: &outs[i],
                    })
                    .collect();
                let (norm, epi) = match e {
                    0 => (Some(norm), Epilogue::Plain),
                    1 => (Some(norm), Epilogue::Glu { act: &act }),
                    _ => (None, Epilogue::Add { acc: &acc }),
                };
                if mmq {
                    dev.mmq_rows(&xs, m, k, norm, &prods, epi, &rec).unwrap();
                } else {
                    dev.fused_matvec(&xs, k, norm, &prods, epi, &rec, false)
                        .unwrap();
                }
                let mut got: Vec<Vec<f32>> = outs
                    .iter()
                    .zip(&widths)
                    .map(|(o, &w)| dev.download_f32(o, m * w).unwrap())
                    .collect();
                match e {
                    1 => got.push(dev.download_f32(&act, m * rows[0]).unwrap()),
                    2 => got.push(dev.download_f32(&acc, m * rows[0]).unwrap()),
                    _ => {}
                }
                got
            };
            for (e, first) in first.iter_mut().enumerate() {
                if e == 1 && !glu_ok {
                    continue;
                }
                let all = run(e, n, 0, true);
                let mut worst = (0f64, 0f64);
                for i in [0, n / 2, n - 1] {
                    let one = run(e, 1, i, false);
                    // The products (not act/acc): against the one-input kernel and f64.
                    let n_prod = if e == 2 {
                        1
                    } else {
                        all.len() - usize::from(e == 1)
                    };
                    for j in 0..n_prod {
                        let mi = if e == 1 { 0 } else { j };
                        let w = rows[mi];
                        let xin: Vec<f64> = if e == 2 {
                            x[i * k..(i + 1) * k].iter().map(|&v| v as f64).collect()
                        } else {
                            normed64[i].clone()
                        };
                        for r in 0..w {
                            let wr = if e == 1 && j == 1 {
                                &mats[0].1[r]
                            } else {
                                &mats[mi].1[r]
                            };
                            let mag: f64 = wr
                                .iter()
                                .zip(&xin)
                                .map(|(&a, b)| (a as f64 * b).abs())
                                .sum();
                            let mut want = dot64(wr, &xin);
                            if e == 0 && j == 0 {
                                want += bias[r] as f64;
                            }
                            let got = all[j][i * w + r] as f64;
                            let d1 = (got - one[j][r] as f64).abs() / mag.max(1e-30);
                            let d2 = (got - want).abs() / mag.max(1e-30);
                            worst = (worst.0.max(d1), worst.1.max(d2));
                            assert!(
                                d1 <= 2e-6 && d2 <= 1e-4,
                                "{types:?} n={n} epilogue {e} output {j} input {i} row {r}: \
                                 mmq {got}, one-input {}, f64 {want}",
                                one[j][r]
                            );
                        }
                    }
                    // act = silu(g)·u of the stored g, u; acc += the stored output.
                    if e == 1 {
                        for r in 0..rows[0] {
                            // The device's expf is within 2 ulp (CUDA's table), not the
                            // host's: a few roundings of 2^-24 in all.
                            let (gv, uv) = (all[0][i * rows[0] + r], all[1][i * rows[0] + r]);
                            let (g64, u64) = (gv as f64, uv as f64);
                            let want = g64 / (1.0 + (-g64).exp()) * u64;
                            let got = all[2][i * rows[0] + r] as f64;
                            assert!(
                                (got - want).abs() <= 1e-6 * want.abs() + 1e-30,
                                "{types:?} n={n} act row {r}: {got} vs {want}"
                            );
                        }
                    }
                    if e == 2 {
                        for r in 0..rows[0] {
                            let o = i * rows[0] + r;
                            assert_eq!(all[1][o], acc0[o] + all[0][o], "{types:?} add row {r}");
                        }
                    }
                }
                // Input 0's outputs: the same bits whatever the input count.
                let mine: Vec<u32> = all
                    .iter()
                    .flat_map(|v| v[..v.len() / n].iter().map(|f| f.to_bits()))
                    .collect();
                match first {
                    None => *first = Some(mine),
                    Some(f) => assert!(
                        *f == mine,
                        "{types:?} epilogue {e}: input 0 differs at n={n}"
                    ),
                }
                let _ = std::io::stderr().write_all(
                    format!(
                        "  mmq {types:?} n={n} epilogue {e}: |y-one|/mag {:.1e}, |y-f64|/mag {:.1e}\n",
                        worst.0, worst.1
                    )
                    .as_bytes(),
                );
            }
        }
    }
}
