//! Writer → reader round trips: every value type, arrays, nesting, tensors, alignment.

use llorch::gguf::{Gguf, GgufError, GgufWriter, Value, ValueType};
use llorch::quant::GgmlType;

/// A file with one key of every scalar type, arrays of every element type, a nested array,
/// a string array, and tensors of several types.
fn sample() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "test");
    w.add_u8("t.u8", 200);
    w.add_i8("t.i8", -100);
    w.add_u16("t.u16", 60000);
    w.add_i16("t.i16", -30000);
    w.add_u32("t.u32", 4_000_000_000);
    w.add_i32("t.i32", -2_000_000_000);
    w.add_u64("t.u64", u64::MAX - 1);
    w.add_i64("t.i64", i64::MIN + 1);
    w.add_f32("t.f32", 1.5e-6);
    w.add_f64("t.f64", -2.25e100);
    w.add_bool("t.bool_true", true);
    w.add_bool("t.bool_false", false);
    w.add_str("t.str", "héllo wörld ✓");
    w.add_str("t.empty_str", "");
    w.add_str_array("t.strs", &["a", "", "ĠHello", "<0x0A>", "日本"]);
    w.add_str_array::<&str>("t.empty_strs", &[]);
    w.add_f32_array("t.f32s", &[1.0, -0.5, f32::INFINITY]);
    w.add_i32_array("t.i32s", &[-1, 0, i32::MAX]);
    w.add_u32_array("t.u32s", &[7, 8, 4_000_000_000]);
    let arrays: Vec<(&str, Value)> = vec![
        ("t.a.u8", Value::Array(vec![Value::U8(1), Value::U8(255)])),
        ("t.a.i8", Value::Array(vec![Value::I8(-1), Value::I8(127)])),
        ("t.a.u16", Value::Array(vec![Value::U16(65535)])),
        ("t.a.i16", Value::Array(vec![Value::I16(-32768)])),
        ("t.a.i64", Value::Array(vec![Value::I64(-5), Value::I64(5)])),
        ("t.a.u64", Value::Array(vec![Value::U64(1 << 40)])),
        ("t.a.f64", Value::Array(vec![Value::F64(0.125)])),
        (
            "t.a.bool",
            Value::Array(vec![Value::Bool(true), Value::Bool(false)]),
        ),
        (
            "t.a.nested",
            Value::Array(vec![
                Value::Array(vec![Value::Str("x"), Value::Str("y")]),
                Value::Array(vec![Value::I32(3)]),
                Value::Array(vec![Value::Array(vec![Value::F32(2.0)])]),
            ]),
        ),
    ];
    for (k, v) in &arrays {
        w.add(k, v).unwrap();
    }
    let f32s: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
    w.add_tensor("a.f32", &[4, 2], GgmlType::F32, f32s).unwrap();
    w.add_tensor("b.q4_0", &[64, 3], GgmlType::Q4_0, vec![0x11u8; 2 * 3 * 18])
        .unwrap();
    w.add_tensor("c.q4_k", &[256], GgmlType::Q4_K, vec![0x22u8; 144])
        .unwrap();
    w.add_tensor("d.f16", &[3, 1, 1, 5], GgmlType::F16, vec![0x33u8; 30])
        .unwrap();
    w
}

#[test]
fn every_value_type_round_trips() {
    let g = Gguf::from_bytes(sample().to_bytes()).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 32);
    assert_eq!(g.get("t.u8"), Some(Value::U8(200)));
    assert_eq!(g.get("t.i8"), Some(Value::I8(-100)));
    assert_eq!(g.get("t.u16"), Some(Value::U16(60000)));
    assert_eq!(g.get("t.i16"), Some(Value::I16(-30000)));
    assert_eq!(g.get("t.u32"), Some(Value::U32(4_000_000_000)));
    assert_eq!(g.get("t.i32"), Some(Value::I32(-2_000_000_000)));
    assert_eq!(g.get("t.u64"), Some(Value::U64(u64::MAX - 1)));
    assert_eq!(g.get("t.i64"), Some(Value::I64(i64::MIN + 1)));
    assert_eq!(g.get("t.f32"), Some(Value::F32(1.5e-6)));
    assert_eq!(g.get("t.f64"), Some(Value::F64(-2.25e100)));
    assert_eq!(g.get("t.bool_true"), Some(Value::Bool(true)));
    assert_eq!(g.get("t.bool_false"), Some(Value::Bool(false)));
    assert_eq!(g.get("t.str"), Some(Value::Str("héllo wörld ✓")));
    assert_eq!(g.get("t.empty_str"), Some(Value::Str("")));
    assert_eq!(g.get("t.missing"), None);

    assert_eq!(
        g.get("t.a.u8"),
        Some(Value::Array(vec![Value::U8(1), Value::U8(255)]))
    );
    assert_eq!(
        g.get("t.a.i8"),
        Some(Value::Array(vec![Value::I8(-1), Value::I8(127)]))
    );
    assert_eq!(
        g.get("t.a.u16"),
        Some(Value::Array(vec![Value::U16(65535)]))
    );
    assert_eq!(
        g.get("t.a.i16"),
        Some(Value::Array(vec![Value::I16(-32768)]))
    );
    assert_eq!(
        g.get("t.a.i64"),
        Some(Value::Array(vec![Value::I64(-5), Value::I64(5)]))
    );
    assert_eq!(
        g.get("t.a.u64"),
        Some(Value::Array(vec![Value::U64(1 << 40)]))
    );
    assert_eq!(
        g.get("t.a.f64"),
        Some(Value::Array(vec![Value::F64(0.125)]))
    );
    assert_eq!(
        g.get("t.a.bool"),
        Some(Value::Array(vec![Value::Bool(true), Value::Bool(false)]))
    );
    assert_eq!(
        g.get("t.a.nested"),
        Some(Value::Array(vec![
            Value::Array(vec![Value::Str("x"), Value::Str("y")]),
            Value::Array(vec![Value::I32(3)]),
            Value::Array(vec![Value::Array(vec![Value::F32(2.0)])]),
        ]))
    );
    assert_eq!(
        g.get_str_array("t.strs").unwrap().unwrap(),
        vec!["a", "", "ĠHello", "<0x0A>", "日本"]
    );
    assert_eq!(
        g.get_str_array("t.empty_strs").unwrap().unwrap(),
        Vec::<&str>::new()
    );
    assert_eq!(g.array_len("t.strs"), Some(5));
    let f = g.get_f32_array("t.f32s").unwrap().unwrap();
    assert_eq!(f, vec![1.0, -0.5, f32::INFINITY]);
    assert_eq!(
        g.get_i32_array("t.i32s").unwrap().unwrap(),
        vec![-1, 0, i32::MAX]
    );
    assert_eq!(
        g.get("t.u32s"),
        Some(Value::Array(vec![
            Value::U32(7),
            Value::U32(8),
            Value::U32(4_000_000_000)
        ]))
    );

    // Metadata keeps file order.
    let keys: Vec<&str> = g.keys().collect();
    assert_eq!(keys[0], "general.architecture");
    assert_eq!(keys[1], "t.u8");
    assert_eq!(g.metadata().len(), keys.len());
}

#[test]
fn typed_accessors_convert_or_refuse() {
    let g = Gguf::from_bytes(sample().to_bytes()).unwrap();
    // Integers of any width convert when the value fits.
    assert_eq!(g.get_u32("t.u8").unwrap(), Some(200));
    assert_eq!(g.get_u64("t.u32").unwrap(), Some(4_000_000_000));
    assert_eq!(g.get_u32("t.u32").unwrap(), Some(4_000_000_000));
    assert_eq!(g.get_u64("t.u16").unwrap(), Some(60000));
    // ... and refuse when it does not.
    let e = g.get_u32("t.u64").unwrap_err();
    assert!(
        matches!(&e, GgufError::Key { key, msg } if key == "t.u64" && msg.contains("does not fit in u32")),
        "{e}"
    );
    let e = g.get_u64("t.i8").unwrap_err();
    assert!(e.to_string().contains("-100 does not fit in u64"), "{e}");
    let e = g.get_u32("t.str").unwrap_err();
    assert!(e.to_string().contains("expected u32, found string"), "{e}");
    assert_eq!(g.get_f32("t.f32").unwrap(), Some(1.5e-6));
    assert_eq!(g.get_f32("t.f64").unwrap(), Some(-2.25e100f64 as f32));
    assert!(g
        .get_f32("t.u32")
        .unwrap_err()
        .to_string()
        .contains("expected f32, found u32"));
    assert_eq!(g.get_bool("t.bool_true").unwrap(), Some(true));
    assert!(g.get_bool("t.u8").is_err());
    assert_eq!(g.get_str("t.str").unwrap(), Some("héllo wörld ✓"));
    assert!(g
        .get_str("t.strs")
        .unwrap_err()
        .to_string()
        .contains("found array of string"));
    assert!(g.get_str_array("t.str").is_err());
    assert!(g
        .get_str_array("t.f32s")
        .unwrap_err()
        .to_string()
        .contains("found array of f32"));
    assert!(g.get_f32_array("t.i32s").is_err());
    assert_eq!(g.get_i32_array("t.a.u8").unwrap().unwrap(), vec![1, 255]);
    let e = g.get_i32_array("t.u32s").unwrap_err();
    assert!(
        e.to_string()
            .contains("element 2 (4000000000) does not fit in i32"),
        "{e}"
    );
    assert!(g.get_i32_array("t.f32s").is_err());
    // Absent keys are Ok(None) for every accessor.
    assert_eq!(g.get_u32("nope").unwrap(), None);
    assert_eq!(g.get_u64("nope").unwrap(), None);
    assert_eq!(g.get_f32("nope").unwrap(), None);
    assert_eq!(g.get_bool("nope").unwrap(), None);
    assert_eq!(g.get_str("nope").unwrap(), None);
    assert_eq!(g.get_str_array("nope").unwrap(), None);
    assert_eq!(g.get_f32_array("nope").unwrap(), None);
    assert_eq!(g.get_i32_array("nope").unwrap(), None);
}

#[test]
fn tensors_round_trip_with_their_data() {
    let g = Gguf::from_bytes(sample().to_bytes()).unwrap();
    let names: Vec<&str> = g.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a.f32", "b.q4_0", "c.q4_k", "d.f16"]);
    let a = g.tensor("a.f32").unwrap();
    assert_eq!(
        (a.dims.as_slice(), a.ty, a.size),
        (&[4u64, 2][..], GgmlType::F32, 32)
    );
    assert_eq!((a.n_elements(), a.n_rows()), (8, 2));
    let data = g.tensor_data(a);
    let vals: Vec<f32> = data
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(vals, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    let b = g.tensor("b.q4_0").unwrap();
    assert_eq!(b.size, 108);
    assert!(g.tensor_data(b).iter().all(|&x| x == 0x11));
    let c = g.tensor("c.q4_k").unwrap();
    assert!(g.tensor_data(c).len() == 144 && g.tensor_data(c).iter().all(|&x| x == 0x22));
    let d = g.tensor("d.f16").unwrap();
    assert_eq!(
        (d.dims.clone(), d.n_rows(), d.size),
        (vec![3, 1, 1, 5], 5, 30)
    );
    assert!(g.tensor_data(d).iter().all(|&x| x == 0x33));
    assert!(g.tensor("zzz").is_none());
    for t in g.tensors() {
        assert_eq!(t.offset % 32, 0, "{}", t.name);
        assert_eq!((g.data_offset() + t.offset) % 32, 0);
        // The owned buffer is 64-byte aligned, so data pointers are 32-byte aligned too.
        assert_eq!(g.tensor_data(t).as_ptr() as usize % 32, 0, "{}", t.name);
    }
    // Data ends exactly at the end of the file.
    let last = g.tensors().iter().max_by_key(|t| t.offset).unwrap();
    assert_eq!(g.data_offset() + last.offset + last.size, g.file_size());
}

#[test]
fn custom_alignment_and_file_io() {
    let mut w = sample();
    w.set_alignment(256).unwrap();
    assert!(w.set_alignment(48).is_err());
    assert!(w.set_alignment(0).is_err());
    assert!(w.set_alignment(1 << 21).is_err());
    let dir = std::env::temp_dir().join(format!("llorch-gguf-rt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("a.gguf");
    w.write_file(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), w.to_bytes());
    let g = Gguf::open(&path).unwrap();
    assert_eq!(g.alignment(), 256);
    assert_eq!(g.get_u32("general.alignment").unwrap(), Some(256));
    for t in g.tensors() {
        assert_eq!(t.offset % 256, 0);
        assert_eq!(
            g.tensor_data(t).as_ptr() as usize % 256,
            0,
            "map is page aligned"
        );
    }
    assert_eq!(g.get_str("t.str").unwrap(), Some("héllo wörld ✓"));
    // Io errors name the path.
    let e = Gguf::open(&dir.join("missing.gguf")).unwrap_err();
    assert!(
        matches!(&e, GgufError::Io(m) if m.contains("missing.gguf")),
        "{e}"
    );
    let e = Gguf::open(&dir).unwrap_err();
    assert!(
        matches!(&e, GgufError::Io(m) if m.contains("not a regular file")),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn version_2_is_read_like_version_3() {
    let mut bytes = sample().to_bytes();
    bytes[4] = 2;
    let g = Gguf::from_bytes(bytes).unwrap();
    assert_eq!(g.version(), 2);
    assert_eq!(g.tensors().len(), 4);
    assert_eq!(g.get_str("t.str").unwrap(), Some("héllo wörld ✓"));
}

#[test]
fn metadata_only_file_and_replaced_keys() {
    let mut w = GgufWriter::new();
    w.add_u32("k", 1);
    w.add_u32("k", 2); // replaces: files never get duplicate keys
    let g = Gguf::from_bytes(w.to_bytes()).unwrap();
    assert_eq!(g.metadata(), vec![("k", Value::U32(2))]);
    assert!(g.tensors().is_empty());
    // A file with nothing at all.
    let g = Gguf::from_bytes(GgufWriter::new().to_bytes()).unwrap();
    assert!(g.metadata().is_empty() && g.tensors().is_empty());
}

#[test]
fn writer_refuses_inconsistent_input() {
    let mut w = GgufWriter::new();
    let e = w
        .add("k", &Value::Array(vec![Value::U8(1), Value::I8(1)]))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("array element 1 is i8, element 0 is u8"),
        "{e}"
    );
    assert!(w
        .add_tensor("t", &[4], GgmlType::F32, vec![0u8; 15])
        .is_err());
    assert!(w
        .add_tensor("t", &[33], GgmlType::Q4_0, vec![0u8; 18])
        .is_err());
    assert!(w.add_tensor("t", &[], GgmlType::F32, vec![]).is_err());
    assert!(w
        .add_tensor("t", &[1, 1, 1, 1, 1], GgmlType::F32, vec![0u8; 4])
        .is_err());
    assert!(w.add_tensor("t", &[0], GgmlType::F32, vec![]).is_err());
    assert!(w.add_tensor("", &[1], GgmlType::F32, vec![0u8; 4]).is_err());
    w.add_tensor("t", &[1], GgmlType::F32, vec![0u8; 4])
        .unwrap();
    assert!(w
        .add_tensor("t", &[1], GgmlType::F32, vec![0u8; 4])
        .is_err());
}

#[test]
fn value_types_and_display() {
    assert_eq!(ValueType::from_id(8), Some(ValueType::Str));
    assert_eq!(ValueType::from_id(13), None);
    assert_eq!(
        Value::Array(vec![Value::U8(1); 9]).to_string(),
        "[1, 1, 1, 1, 1, … (9 items)]"
    );
    assert_eq!(Value::Str("a\"b").to_string(), "\"a\\\"b\"");
}

#[test]
fn gguf_is_send_and_sync() {
    let g = std::sync::Arc::new(Gguf::from_bytes(sample().to_bytes()).unwrap());
    let g2 = g.clone();
    let n = std::thread::spawn(move || g2.tensors().len())
        .join()
        .unwrap();
    assert_eq!(n, g.tensors().len());
}
