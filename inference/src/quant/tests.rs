use super::*;

// A tiny protobuf encoder, enough to write the fields the walker reads.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}
fn bytes_field(field: u32, b: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(field) << 3 | 2, out);
    varint(b.len() as u64, out);
    out.extend_from_slice(b);
}
fn int_field(field: u32, v: u64, out: &mut Vec<u8>) {
    varint(u64::from(field) << 3, out);
    varint(v, out);
}
fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> Vec<u8> {
    let mut n = Vec::new();
    for i in inputs {
        bytes_field(1, i.as_bytes(), &mut n);
    }
    for o in outputs {
        bytes_field(2, o.as_bytes(), &mut n);
    }
    bytes_field(3, format!("{op}_node").as_bytes(), &mut n);
    bytes_field(4, op.as_bytes(), &mut n);
    // An attribute with a float (wire type 5) the walker must step over.
    let mut attr = Vec::new();
    bytes_field(1, b"alpha", &mut attr);
    varint(2 << 3 | 5, &mut attr);
    attr.extend_from_slice(&1.5f32.to_le_bytes());
    bytes_field(5, &attr, &mut n);
    n
}
/// An initializer; `packed` writes dims the proto3 way, else one field each.
fn tensor(name: &str, ty: u64, dims: &[u64], packed: bool) -> Vec<u8> {
    let mut t = Vec::new();
    if packed {
        let mut p = Vec::new();
        for d in dims {
            varint(*d, &mut p);
        }
        bytes_field(1, &p, &mut t);
    } else {
        for d in dims {
            int_field(1, *d, &mut t);
        }
    }
    int_field(2, ty, &mut t);
    bytes_field(8, name.as_bytes(), &mut t);
    bytes_field(9, &[0u8; 8], &mut t); // raw_data, skipped
    t
}
fn model(nodes: &[Vec<u8>], inits: &[Vec<u8>]) -> Vec<u8> {
    let mut g = Vec::new();
    for n in nodes {
        bytes_field(1, n, &mut g);
    }
    bytes_field(2, b"graph", &mut g);
    for t in inits {
        bytes_field(5, t, &mut g);
    }
    let mut m = Vec::new();
    int_field(1, 8, &mut m); // ir_version
    bytes_field(2, b"test", &mut m); // producer_name
    bytes_field(7, &g, &mut m);
    m
}

/// Conv on a DQ'd int8 weight (per channel), activations through Q/DQ, and
/// a second Conv with a float weight (a head kept in float).
fn qdq_model() -> Vec<u8> {
    model(
        &[
            node("QuantizeLinear", &["x", "xs", "xz"], &["xq"]),
            node("DequantizeLinear", &["xq", "xs", "xz"], &["xd"]),
            node("DequantizeLinear", &["wq", "ws", "wz"], &["wd"]),
            // quantize_static stores a quantized Conv's bias as int32.
            node("DequantizeLinear", &["bq", "bs"], &["bd"]),
            node("Conv", &["xd", "wd", "bd"], &["y"]),
            node("Conv", &["y", "w2"], &["out"]),
        ],
        &[
            tensor("xs", 1, &[], true),
            tensor("xz", 2, &[], true),
            tensor("wq", 3, &[4, 3, 1, 1], true),
            tensor("ws", 1, &[4], false),
            tensor("wz", 3, &[4], false),
            tensor("bq", 6, &[4], true),
            tensor("bs", 1, &[4], true),
            tensor("w2", 1, &[2, 4, 1, 1], false),
        ],
    )
}

#[test]
fn recognises_a_qdq_model_and_its_float_layers() {
    let q = quantization(&qdq_model()).expect("reads");
    assert_eq!(q.format, "qdq");
    assert!(q.is_quantized());
    assert_eq!((q.quantize_linear, q.dequantize_linear), (1, 3));
    assert_eq!(q.weight_types, BTreeSet::from(["int8".to_owned()]));
    assert_eq!(q.activation_types, BTreeSet::from(["uint8".to_owned()]));
    assert!(q.per_channel);
    assert_eq!((q.quantized_layers, q.float_layers), (1, 1));
    let line = q.describe();
    assert!(line.starts_with("yes: QDQ (1 QuantizeLinear, 3 DequantizeLinear)"), "{line}");
    assert!(line.contains("int8 weights per channel, uint8 activations"), "{line}");
    assert!(line.contains("1 of 2 Conv/Gemm/MatMul layers quantized, 1 kept in float"), "{line}");
}

#[test]
fn a_per_tensor_weight_is_not_called_per_channel() {
    let m = model(
        &[node("DequantizeLinear", &["wq", "ws"], &["wd"]), node("MatMul", &["x", "wd"], &["y"])],
        &[tensor("wq", 3, &[8, 8], true), tensor("ws", 1, &[], true)],
    );
    let q = quantization(&m).expect("reads");
    assert!(!q.per_channel);
    assert_eq!(q.quantized_layers, 1);
    assert!(q.describe().contains("int8 weights per tensor"), "{}", q.describe());
}

#[test]
fn recognises_qoperator_models() {
    let m = model(
        &[
            node("QuantizeLinear", &["x", "s", "z"], &["xq"]),
            node("QLinearConv", &["xq", "s", "z", "w", "ws", "wz", "ys", "yz"], &["yq"]),
            node("QLinearSigmoid", &["yq", "ys", "yz", "s", "z"], &["zq"]),
        ],
        &[tensor("w", 3, &[4, 3, 3, 3], true), tensor("z", 2, &[], true), tensor("s", 1, &[], true)],
    );
    let q = quantization(&m).expect("reads");
    assert_eq!(q.format, "qdq+qoperator");
    assert_eq!(q.qoperator_ops.get("QLinearConv"), Some(&1));
    assert_eq!(q.qoperator_ops.get("QLinearSigmoid"), Some(&1));
    assert_eq!(q.quantized_layers, 1);
    assert!(q.weight_types.contains("int8"));
    assert!(q.describe().contains("QOperator (1 QLinearConv, 1 QLinearSigmoid)"), "{}", q.describe());
}

#[test]
fn a_float_model_is_not_quantized() {
    let m = model(
        &[node("Conv", &["x", "w"], &["y"]), node("Sigmoid", &["y"], &["z"])],
        &[tensor("w", 1, &[4, 3, 3, 3], true)],
    );
    let q = quantization(&m).expect("reads");
    assert_eq!(q.format, "float");
    assert!(!q.is_quantized());
    assert_eq!(q.float_layers, 1);
    assert!(q.describe().starts_with("no (float: 1 Conv/Gemm/MatMul layers"), "{}", q.describe());
}

#[test]
fn reads_nodes_inside_subgraphs() {
    // An If whose then-branch holds the quantized Conv.
    let body = {
        let mut g = Vec::new();
        bytes_field(1, &node("DequantizeLinear", &["wq", "ws"], &["wd"]), &mut g);
        bytes_field(1, &node("Conv", &["x", "wd"], &["y"]), &mut g);
        g
    };
    let mut attr = Vec::new();
    bytes_field(1, b"then_branch", &mut attr);
    bytes_field(6, &body, &mut attr);
    let mut if_node = node("If", &["c"], &["y"]);
    bytes_field(5, &attr, &mut if_node);
    let q = quantization(&model(&[if_node], &[])).expect("reads");
    assert_eq!((q.dequantize_linear, q.quantized_layers), (1, 1));
}

#[test]
fn truncated_or_garbled_bytes_are_an_error_not_a_panic() {
    let m = qdq_model();
    // Every cut inside a field (the first two bytes are a whole field).
    for cut in [1, 5, m.len() / 3, m.len() / 2, m.len() - 1] {
        let err = quantization(&m[..cut]).expect_err("truncated");
        assert!(err.to_string().contains("cannot be read"), "{err}");
    }
    // Wire type 7 does not exist.
    assert!(quantization(&[0x0f, 0x00]).is_err());
    // A length far past the end.
    assert!(quantization(&[0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    // An empty file is an empty model: nothing quantized.
    assert_eq!(quantization(&[]).expect("empty").format, "float");
}
