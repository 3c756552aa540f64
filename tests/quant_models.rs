//! The real models: every tensor dequantizes to finite values, and real weight rows dot
//! correctly at every SIMD level. Uses a tiny local reader of the GGUF tensor table (the
//! crate's reader is written concurrently); it only needs names, dims, types and offsets.

mod common;

use llorch::quant::{
    dequantize, quantize_q8, supported_for_dot, vec_dot_at, vec_dot_multi_at, BlockQ8, GgmlType,
    SimdLevel,
};

struct Tensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    offset: usize, // absolute, in the file
    size: usize,
}

struct Cur<'a> {
    b: &'a [u8],
    p: usize,
}
impl Cur<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.b[self.p..self.p + n];
        self.p += n;
        s
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8_lossy(self.take(n)).into_owned()
    }
    /// Skips a metadata value; returns it if it is a u32 (for general.alignment).
    fn value(&mut self, ty: u32) -> Option<u32> {
        match ty {
            0 | 1 | 7 => drop(self.take(1)),
            2 | 3 => drop(self.take(2)),
            4 | 5 => return Some(self.u32()),
            6 => drop(self.take(4)),
            8 => drop(self.string()),
            9 => {
                let (et, n) = (self.u32(), self.u64());
                for _ in 0..n {
                    self.value(et);
                }
            }
            10..=12 => drop(self.take(8)),
            t => panic!("unknown GGUF value type {t}"),
        }
        None
    }
}

fn tensors(bytes: &[u8]) -> Vec<Tensor> {
    let mut c = Cur { b: bytes, p: 0 };
    assert_eq!(c.take(4), b"GGUF");
    let _version = c.u32();
    let (nt, nkv) = (c.u64(), c.u64());
    let mut align = 32u64;
    for _ in 0..nkv {
        let key = c.string();
        let ty = c.u32();
        if let Some(v) = c.value(ty) {
            if key == "general.alignment" {
                align = v as u64;
            }
        }
    }
    let mut out = Vec::new();
    for _ in 0..nt {
        let name = c.string();
        let nd = c.u32();
        let dims: Vec<u64> = (0..nd).map(|_| c.u64()).collect();
        let ty = GgmlType::from_id(c.u32()).expect("known type");
        let off = c.u64();
        let n: u64 = dims.iter().product();
        let size = ty.bytes_for(n).unwrap() as usize;
        out.push(Tensor {
            name,
            dims,
            ty,
            offset: off as usize,
            size,
        });
    }
    let data = (c.p as u64).div_ceil(align) * align;
    for t in &mut out {
        t.offset += data as usize;
        assert!(t.offset + t.size <= bytes.len(), "{} past the end", t.name);
    }
    out
}

fn open(name: &str) -> memmap2::Mmap {
    let f = std::fs::File::open(common::model_path(name)).unwrap();
    // SAFETY: read-only map of a cached model file nobody writes while tests run.
    unsafe { memmap2::Mmap::map(&f).unwrap() }
}

#[test]
fn every_tensor_dequantizes_to_finite_values() {
    for model in [common::QWEN_05B, common::SMOLLM2, common::GEMMA3] {
        let map = open(model);
        let ts = tensors(&map);
        let mut buf = vec![0.0f32; 1 << 16];
        let (mut n_values, mut types) = (0u64, std::collections::BTreeSet::new());
        for t in &ts {
            let data = &map[t.offset..t.offset + t.size];
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
        let map = open(model);
        for t in tensors(&map) {
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
                let row = &map[t.offset + r * row_bytes..t.offset + (r + 1) * row_bytes];
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
