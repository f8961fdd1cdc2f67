//! Whether a model is quantized, read from the ONNX graph itself.
//!
//! ONNX Runtime runs a quantized model like any other and says nothing of
//! its nodes, so `vigil models inspect` reads them from the file: QDQ models
//! (`models/quantize.py`, ONNX Runtime's `quantize_static`) carry
//! `QuantizeLinear`/`DequantizeLinear` pairs around float operators, which
//! ONNX Runtime fuses into integer kernels when it loads them; QOperator
//! models carry the integer operators themselves (`QLinearConv`,
//! `MatMulInteger`, ...). Both keep float inputs and outputs, so everything
//! else Vigil does with a model (decoder choice, preprocessing, parity) is
//! the same for them.
//!
//! Only a handful of protobuf fields are needed (node op types, inputs and
//! outputs, the initializers' names, types and dims), so they are read here
//! with a small wire-format walker rather than a generated ONNX schema.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use thiserror::Error;

/// A model file that is not well-formed protobuf where the walker looked.
#[derive(Debug, Clone, Error)]
#[error("the model's graph cannot be read ({what} at byte {at}); is it a complete .onnx file?")]
pub struct GraphReadError {
    what: &'static str,
    at: usize,
}

/// Layers whose weights decide whether the model computes in integers.
const LAYERS: &[&str] = &["Conv", "ConvTranspose", "Gemm", "MatMul"];

/// Operators of the QOperator format (and ONNX Runtime's integer contrib
/// ops); the first ones are layers with integer weights.
const QOPERATOR_LAYERS: &[&str] = &[
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
    "QGemm",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QAttention",
    "MatMulNBits",
];
const QOPERATOR_OTHERS: &[&str] = &[
    "QLinearAdd",
    "QLinearMul",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearSoftmax",
    "QLinearConcat",
    "QLinearAveragePool",
    "QLinearGlobalAveragePool",
    "QLinearReduceMean",
    "QLinearWhere",
    "DynamicQuantizeLinear",
];

/// What the graph says about quantization.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Quantization {
    /// `float`, `qdq`, `qoperator` or `qdq+qoperator`.
    pub format: &'static str,
    pub quantize_linear: usize,
    pub dequantize_linear: usize,
    /// QOperator / integer operators by type.
    pub qoperator_ops: BTreeMap<String, usize>,
    /// Element types of the quantized weights (`int8`, `uint8`, `int4`...).
    pub weight_types: BTreeSet<String>,
    /// Element types activations are quantized to (`QuantizeLinear`'s zero points).
    pub activation_types: BTreeSet<String>,
    /// Some weight has a scale per output channel.
    pub per_channel: bool,
    /// Conv/Gemm/MatMul layers that run on quantized weights.
    pub quantized_layers: usize,
    /// Conv/Gemm/MatMul layers left in float (on a quantized model: those
    /// kept in float on purpose, such as a detection head's last layers).
    pub float_layers: usize,
}

impl Quantization {
    pub fn is_quantized(&self) -> bool {
        self.format != "float"
    }

    /// One line for `vigil models inspect`.
    pub fn describe(&self) -> String {
        if !self.is_quantized() {
            return format!(
                "no (float: {} Conv/Gemm/MatMul layers, no QuantizeLinear/DequantizeLinear)",
                self.float_layers
            );
        }
        let mut parts = Vec::new();
        if self.quantize_linear + self.dequantize_linear > 0 {
            parts.push(format!(
                "QDQ ({} QuantizeLinear, {} DequantizeLinear)",
                self.quantize_linear, self.dequantize_linear
            ));
        }
        if !self.qoperator_ops.is_empty() {
            let ops: Vec<String> = self.qoperator_ops.iter().map(|(k, v)| format!("{v} {k}")).collect();
            parts.push(format!("QOperator ({})", ops.join(", ")));
        }
        let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join("/");
        let mut what = format!("yes: {}", parts.join(" + "));
        if !self.weight_types.is_empty() {
            what += &format!(
                "; {} weights{}",
                join(&self.weight_types),
                if self.per_channel { " per channel" } else { " per tensor" }
            );
        }
        if !self.activation_types.is_empty() {
            what += &format!(", {} activations", join(&self.activation_types));
        }
        let layers = self.quantized_layers + self.float_layers;
        what + &format!(
            "; {} of {layers} Conv/Gemm/MatMul layers quantized, {} kept in float",
            self.quantized_layers, self.float_layers
        )
    }
}

/// Reads the quantization facts of an ONNX model from its bytes.
pub fn quantization(model: &[u8]) -> Result<Quantization, GraphReadError> {
    let mut g = Graph::default();
    let mut r = Reader { b: model, i: 0, base: 0 };
    while let Some((field, v)) = r.field()? {
        if field == 7 {
            g.read(v.bytes(&r)?, r.base_of(v))?;
        }
    }
    Ok(g.summarise())
}

#[derive(Default)]
struct Node {
    op: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

#[derive(Default)]
struct Graph {
    nodes: Vec<Node>,
    /// Initializer name -> (element type, number of elements).
    inits: HashMap<String, (i32, u64)>,
}

impl Graph {
    /// Reads a GraphProto (and, through node attributes, its subgraphs).
    fn read(&mut self, b: &[u8], base: usize) -> Result<(), GraphReadError> {
        let mut r = Reader { b, i: 0, base };
        while let Some((field, v)) = r.field()? {
            match field {
                1 => self.read_node(v.bytes(&r)?, r.base_of(v))?,
                5 => {
                    let (name, ty, n) = read_tensor(v.bytes(&r)?, r.base_of(v))?;
                    self.inits.insert(name, (ty, n));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn read_node(&mut self, b: &[u8], base: usize) -> Result<(), GraphReadError> {
        let mut r = Reader { b, i: 0, base };
        let mut n = Node::default();
        while let Some((field, v)) = r.field()? {
            match field {
                1 => n.inputs.push(v.string(&r)?),
                2 => n.outputs.push(v.string(&r)?),
                4 => n.op = v.string(&r)?,
                5 => {
                    // AttributeProto: g = 6, graphs = 11 (If, Loop, Scan bodies).
                    let mut a = Reader { b: v.bytes(&r)?, i: 0, base: r.base_of(v) };
                    while let Some((af, av)) = a.field()? {
                        if af == 6 || af == 11 {
                            self.read(av.bytes(&a)?, a.base_of(av))?;
                        }
                    }
                }
                _ => {}
            }
        }
        self.nodes.push(n);
        Ok(())
    }

    fn summarise(&self) -> Quantization {
        let mut q = Quantization::default();
        // DequantizeLinear outputs -> what they dequantize: a stored tensor
        // (its element type, and whether its scale has one value per channel),
        // or None for an activation (a QuantizeLinear's output).
        let mut dq: HashMap<&str, Option<(i32, bool)>> = HashMap::new();
        for n in self.nodes.iter().filter(|n| n.op == "DequantizeLinear") {
            let stored = n.inputs.first().and_then(|w| self.inits.get(w)).map(|(ty, _)| {
                let scale = n.inputs.get(1).and_then(|s| self.inits.get(s));
                (*ty, scale.is_some_and(|(_, count)| *count > 1))
            });
            for o in &n.outputs {
                dq.insert(o.as_str(), stored);
            }
        }
        for n in &self.nodes {
            let op = n.op.as_str();
            match op {
                "QuantizeLinear" => {
                    q.quantize_linear += 1;
                    if let Some((ty, _)) = n.inputs.get(2).and_then(|z| self.inits.get(z)) {
                        q.activation_types.insert(type_name(*ty));
                    }
                }
                "DequantizeLinear" => q.dequantize_linear += 1,
                _ if QOPERATOR_LAYERS.contains(&op) => {
                    *q.qoperator_ops.entry(op.to_owned()).or_default() += 1;
                    q.quantized_layers += 1;
                    for (ty, count) in n.inputs.iter().skip(1).filter_map(|i| self.inits.get(i)) {
                        // int32 inputs are biases.
                        if is_integer(*ty) && *ty != 6 && *count > 1 {
                            q.weight_types.insert(type_name(*ty));
                        }
                    }
                }
                _ if QOPERATOR_OTHERS.contains(&op) => {
                    *q.qoperator_ops.entry(op.to_owned()).or_default() += 1
                }
                _ if LAYERS.contains(&op) => match n.inputs.get(1).and_then(|w| dq.get(w.as_str())) {
                    // Biases (int32) and activations are dequantized too;
                    // only the weight input says what the layer computes in.
                    Some(stored) => {
                        q.quantized_layers += 1;
                        if let Some((ty, per_channel)) = stored {
                            q.weight_types.insert(type_name(*ty));
                            q.per_channel |= per_channel;
                        }
                    }
                    None => q.float_layers += 1,
                },
                _ => {}
            }
        }
        let qdq = q.quantize_linear + q.dequantize_linear > 0;
        let qop = !q.qoperator_ops.is_empty();
        q.format = match (qdq, qop) {
            (false, false) => "float",
            (true, false) => "qdq",
            (false, true) => "qoperator",
            (true, true) => "qdq+qoperator",
        };
        q
    }
}

/// TensorProto: (name, element type, number of elements).
fn read_tensor(b: &[u8], base: usize) -> Result<(String, i32, u64), GraphReadError> {
    let mut r = Reader { b, i: 0, base };
    let (mut name, mut ty, mut count) = (String::new(), 0, 1u64);
    while let Some((field, v)) = r.field()? {
        match (field, v) {
            (1, Value::Varint(d)) => count = count.saturating_mul(d),
            (1, Value::Bytes(..)) => {
                // Packed dims.
                let mut p = Reader { b: v.bytes(&r)?, i: 0, base: r.base_of(v) };
                while p.i < p.b.len() {
                    count = count.saturating_mul(p.varint()?);
                }
            }
            (2, Value::Varint(t)) => ty = t as i32,
            (8, _) => name = v.string(&r)?,
            _ => {}
        }
    }
    Ok((name, ty, count))
}

fn is_integer(ty: i32) -> bool {
    matches!(ty, 2..=7 | 12 | 13 | 21 | 22)
}

/// TensorProto.DataType by number.
fn type_name(ty: i32) -> String {
    match ty {
        1 => "float32",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        10 => "float16",
        16 => "bfloat16",
        17..=20 => "float8",
        21 => "uint4",
        22 => "int4",
        _ => return format!("type {ty}"),
    }
    .to_owned()
}

#[derive(Clone, Copy)]
enum Value {
    Varint(u64),
    /// Start and end of a length-delimited field within the reader's bytes.
    Bytes(usize, usize),
    Fixed,
}

impl Value {
    fn bytes<'a>(self, r: &Reader<'a>) -> Result<&'a [u8], GraphReadError> {
        match self {
            Value::Bytes(s, e) => Ok(&r.b[s..e]),
            _ => Err(r.err("expected a length-delimited field")),
        }
    }
    fn string(self, r: &Reader<'_>) -> Result<String, GraphReadError> {
        Ok(String::from_utf8_lossy(self.bytes(r)?).into_owned())
    }
}

/// Protobuf wire format over one message's bytes; `base` is where they
/// start in the file, for error positions.
struct Reader<'a> {
    b: &'a [u8],
    i: usize,
    base: usize,
}

impl Reader<'_> {
    fn err(&self, what: &'static str) -> GraphReadError {
        GraphReadError { what, at: self.base + self.i }
    }

    fn base_of(&self, v: Value) -> usize {
        match v {
            Value::Bytes(s, _) => self.base + s,
            _ => self.base + self.i,
        }
    }

    fn varint(&mut self) -> Result<u64, GraphReadError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.b.get(self.i) else {
                return Err(self.err("truncated varint"));
            };
            self.i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    fn skip(&mut self, n: usize, what: &'static str) -> Result<usize, GraphReadError> {
        let start = self.i;
        match start.checked_add(n) {
            Some(end) if end <= self.b.len() => {
                self.i = end;
                Ok(start)
            }
            _ => Err(self.err(what)),
        }
    }

    /// The next field: its number and value, or None at the end.
    fn field(&mut self) -> Result<Option<(u32, Value)>, GraphReadError> {
        if self.i >= self.b.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| self.err("field number out of range"))?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.skip(8, "truncated 64-bit field")?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| self.err("length out of range"))?;
                let start = self.skip(len, "a field longer than the file")?;
                Value::Bytes(start, start + len)
            }
            5 => {
                self.skip(4, "truncated 32-bit field")?;
                Value::Fixed
            }
            _ => return Err(self.err("unknown wire type")),
        };
        Ok(Some((number, value)))
    }
}

#[cfg(test)]
mod tests;
