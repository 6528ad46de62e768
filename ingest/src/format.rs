//! `ioConfig.inputFormat`: how a stream of bytes becomes records.
//!
//! - `json`: one JSON object per line; `flattenSpec` with `root` and `path` fields (JSONPath
//!   `$.a.b[0]`, `$['a b']`) and `useFieldDiscovery` (default true: every top-level field whose
//!   value is a scalar or a list of scalars).
//! - `csv` and `tsv`: `columns` or `findColumnsFromHeader`, `skipHeaderRows`, `listDelimiter`
//!   (splits a value into a multi-value string), and for `tsv` a `delimiter` (default tab). An
//!   empty value is null.
//!
//! A line that does not parse is an error for that line only: the reader goes on, and the
//! caller counts it as unparseable.

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::spec::{field, FieldError};

/// A parsed `inputFormat`.
#[derive(Debug, Clone, PartialEq)]
pub enum InputFormat {
    Json {
        flatten: Option<Flatten>,
    },
    Delimited(Delimited),
    /// Parquet files; read by [`crate::parquet_input`], not as a stream.
    Parquet {
        flatten: Option<Flatten>,
        binary_as_string: bool,
    },
}

/// `flattenSpec`.
#[derive(Debug, Clone, PartialEq)]
pub struct Flatten {
    pub discover: bool,
    pub fields: Vec<(String, Vec<PathStep>)>,
}

/// One step of a JSONPath.
#[derive(Debug, Clone, PartialEq)]
pub enum PathStep {
    Key(String),
    Index(usize),
}

/// `csv` or `tsv`.
#[derive(Debug, Clone, PartialEq)]
pub struct Delimited {
    pub delimiter: u8,
    pub columns: Option<Vec<String>>,
    pub find_header: bool,
    pub skip_header_rows: usize,
    pub list_delimiter: Option<String>,
}

impl InputFormat {
    pub fn parse(v: &Value) -> Result<InputFormat, FieldError> {
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| field("type", "required"))?;
        match kind {
            "json" => {
                let flatten = match v.get("flattenSpec") {
                    None | Some(Value::Null) => None,
                    Some(f) => Some(parse_flatten(f)?),
                };
                Ok(InputFormat::Json { flatten })
            }
            "csv" | "tsv" => {
                let delimiter = match (kind, v.get("delimiter").and_then(Value::as_str)) {
                    ("csv", _) => b',',
                    (_, None) => b'\t',
                    (_, Some(d)) if d.len() == 1 => d.as_bytes()[0],
                    (_, Some(d)) => return Err(field("delimiter", format!("[{d}] must be one single-byte character"))),
                };
                let columns = match v.get("columns") {
                    None | Some(Value::Null) => None,
                    Some(Value::Array(a)) if !a.is_empty() => Some(
                        a.iter()
                            .map(|c| c.as_str().map(str::to_string))
                            .collect::<Option<Vec<_>>>()
                            .ok_or_else(|| field("columns", "must be a list of column names"))?,
                    ),
                    Some(Value::Array(_)) => None,
                    Some(_) => return Err(field("columns", "must be a list of column names")),
                };
                let find_header = v.get("findColumnsFromHeader").and_then(Value::as_bool).unwrap_or(false);
                if columns.is_none() && !find_header {
                    return Err(field(
                        "columns",
                        "give the column names in \"columns\", or set \"findColumnsFromHeader\": true",
                    ));
                }
                let skip_header_rows = v.get("skipHeaderRows").and_then(Value::as_u64).unwrap_or(0) as usize;
                let list_delimiter = match v.get("listDelimiter").and_then(Value::as_str) {
                    Some("") => None,
                    Some(d) => Some(d.to_string()),
                    None => Some("\u{1}".to_string()),
                };
                Ok(InputFormat::Delimited(Delimited {
                    delimiter,
                    columns,
                    find_header,
                    skip_header_rows,
                    list_delimiter,
                }))
            }
            "parquet" => {
                let flatten = match v.get("flattenSpec") {
                    None | Some(Value::Null) => None,
                    Some(f) => Some(parse_flatten(f)?),
                };
                let binary_as_string = match v.get("binaryAsString") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(field("binaryAsString", "must be true or false")),
                };
                Ok(InputFormat::Parquet {
                    flatten,
                    binary_as_string,
                })
            }
            "avro_ocf" | "orc" | "protobuf" | "regex" | "kafka" | "javascript" => Err(field(
                "type",
                format!(
                    "input format [{kind}] is not supported by this raftlord version; use json, csv, tsv or parquet"
                ),
            )),
            other => Err(field("type", format!("unknown input format [{other}]"))),
        }
    }

    /// The records of one stream, each with the line it started on (1-based). With `keep`,
    /// a JSON line's other fields are checked but not read into the record.
    pub fn records(
        &self,
        reader: Box<dyn BufRead + Send>,
        keep: Option<Arc<Projection>>,
    ) -> Box<dyn Iterator<Item = (u64, Result<Record, String>)> + Send> {
        match self {
            InputFormat::Json { flatten } => Box::new(JsonLines {
                reader,
                line: String::new(),
                line_no: 0,
                flatten: flatten.clone(),
                keep,
                known: KnownKeys::default(),
                done: false,
                fields: 0,
            }),
            InputFormat::Delimited(d) => Box::new(DelimitedRecords::new(d.clone(), reader)),
            InputFormat::Parquet { .. } => Box::new(std::iter::once((
                0,
                Err("cannot read: Parquet input is read from files, not streams".to_string()),
            ))),
        }
    }
}

fn parse_flatten(v: &Value) -> Result<Flatten, FieldError> {
    let discover = v.get("useFieldDiscovery").and_then(Value::as_bool).unwrap_or(true);
    let mut fields = Vec::new();
    if let Some(list) = v.get("fields").and_then(Value::as_array) {
        for (i, f) in list.iter().enumerate() {
            let at = format!("flattenSpec.fields[{i}]");
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| field(&format!("{at}.name"), "required"))?;
            let kind = f.get("type").and_then(Value::as_str).unwrap_or("path");
            let path = match kind {
                "root" => vec![PathStep::Key(name.to_string())],
                "path" => {
                    let expr = f
                        .get("expr")
                        .and_then(Value::as_str)
                        .ok_or_else(|| field(&format!("{at}.expr"), "required"))?;
                    parse_json_path(expr).map_err(|m| field(&format!("{at}.expr"), m))?
                }
                other => {
                    return Err(field(
                        &format!("{at}.type"),
                        format!("flatten field type [{other}] is not supported; use root or path"),
                    ))
                }
            };
            fields.push((name.to_string(), path));
        }
    }
    Ok(Flatten { discover, fields })
}

/// `$.a.b[0]`, `$['a b'][1]`, `$.a.*` is refused.
pub fn parse_json_path(expr: &str) -> Result<Vec<PathStep>, String> {
    let bad = || format!("[{expr}] is not a JSONPath raftlord reads; write $.a.b, $['a b'] or $.a[0]");
    let rest = expr.strip_prefix('$').ok_or_else(bad)?;
    let b = rest.as_bytes();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'.' => {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && b[j] != b'.' && b[j] != b'[' {
                    j += 1;
                }
                let key = &rest[start..j];
                if key.is_empty() || key == "*" {
                    return Err(bad());
                }
                steps.push(PathStep::Key(key.to_string()));
                i = j;
            }
            b'[' => {
                let close = rest[i..].find(']').map(|c| c + i).ok_or_else(bad)?;
                let inner = rest[i + 1..close].trim();
                if let Some(q) = inner
                    .strip_prefix('\'')
                    .and_then(|s| s.strip_suffix('\''))
                    .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
                {
                    steps.push(PathStep::Key(q.to_string()));
                } else {
                    steps.push(PathStep::Index(inner.parse().map_err(|_| bad())?));
                }
                i = close + 1;
            }
            _ => return Err(bad()),
        }
    }
    Ok(steps)
}

fn follow<'a>(v: &'a Value, path: &[PathStep]) -> Option<&'a Value> {
    let mut cur = v;
    for s in path {
        cur = match s {
            PathStep::Key(k) => cur.get(k.as_str())?,
            PathStep::Index(i) => cur.get(*i)?,
        };
    }
    Some(cur)
}

fn is_flat(v: &Value) -> bool {
    match v {
        Value::Object(_) => false,
        Value::Array(a) => a.iter().all(|x| !x.is_object() && !x.is_array()),
        _ => true,
    }
}

fn parse_json_line(line: &str, flatten: Option<&Flatten>) -> Result<Record, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(obj) = v else {
        return Err("not a JSON object".to_string());
    };
    Ok(Record::Json(match flatten {
        None => obj,
        Some(f) => f.apply(obj),
    }))
}

impl Flatten {
    /// The fields of `obj` this spec asks for: the discovered ones, then each path's value.
    pub fn apply(&self, obj: Map<String, Value>) -> Map<String, Value> {
        let f = self;
        let root = Value::Object(obj);
        let mut out = Map::new();
        if f.discover {
            if let Value::Object(o) = &root {
                for (k, v) in o {
                    if is_flat(v) {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        for (name, path) in &f.fields {
            out.insert(name.clone(), follow(&root, path).cloned().unwrap_or(Value::Null));
        }
        out
    }
}

/// One input record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Json(Map<String, Value>),
    /// A JSON line kept as text, with where each field is: plain strings are read in place,
    /// and only other values are parsed. The common case, without a `flattenSpec`.
    Line(LineRecord),
    Columns {
        header: Arc<Header>,
        values: csv::StringRecord,
    },
}

/// Column names of delimited input and where each is.
#[derive(Debug, PartialEq)]
pub struct Header {
    /// Unique in the process: what a [`FieldSlot`] remembers the header by.
    id: u64,
    pub names: Vec<String>,
    pub index: HashMap<String, usize, crate::rows::Hasher>,
    pub list_delimiter: Option<String>,
}

/// An id unique in the process, for what a [`FieldSlot`] remembers (headers, projections).
fn next_source_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Header {
    fn new(names: Vec<String>, list_delimiter: Option<String>) -> Header {
        let mut index = HashMap::default();
        for (i, n) in names.iter().enumerate() {
            index.entry(n.clone()).or_insert(i);
        }
        Header {
            id: next_source_id(),
            names,
            index,
            list_delimiter,
        }
    }
}

/// Where one named field was in the records of one header or projection: the rows of a
/// delimited file share their header, and the lines of a JSON file their projection, so
/// [`Record::get_cached`] looks a name up once per file, not once per row.
#[derive(Debug, Clone, Default)]
pub struct FieldSlot {
    /// The id of the header or projection.
    source: u64,
    index: Option<usize>,
}

/// A field of a record, borrowed.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldRef<'a> {
    Absent,
    Null,
    Text(&'a str),
    Json(&'a Value),
    List(Vec<&'a str>),
}

impl Record {
    pub fn get(&self, name: &str) -> FieldRef<'_> {
        match self {
            Record::Line(l) => l.get(name),
            Record::Json(m) => match m.get(name) {
                None => FieldRef::Absent,
                Some(Value::Null) => FieldRef::Null,
                Some(Value::String(s)) => FieldRef::Text(s),
                Some(v) => FieldRef::Json(v),
            },
            Record::Columns { header, values } => column(header, values, header.index.get(name).copied()),
        }
    }

    /// [`Record::get`], remembering in `slot` where the field is for the next record of the
    /// same header.
    pub fn get_cached(&self, name: &str, slot: &mut FieldSlot) -> FieldRef<'_> {
        match self {
            Record::Columns { header, values } => {
                if slot.source != header.id {
                    *slot = FieldSlot {
                        source: header.id,
                        index: header.index.get(name).copied(),
                    };
                }
                column(header, values, slot.index)
            }
            Record::Line(l @ LineRecord { keep: Some(keep), .. }) => {
                if slot.source != keep.id {
                    *slot = FieldSlot {
                        source: keep.id,
                        index: keep.index(name),
                    };
                }
                slot.index.map_or(FieldRef::Absent, |i| l.field(i))
            }
            _ => self.get(name),
        }
    }

    /// The field names, in input order.
    pub fn names(&self) -> Vec<&str> {
        match self {
            Record::Line(l) => l
                .fields
                .iter()
                .filter(|f| !matches!(f.value, Slot::Absent))
                .map(|f| &l.text[f.key.0 as usize..f.key.1 as usize])
                .collect(),
            Record::Json(m) => m.keys().map(String::as_str).collect(),
            Record::Columns { header, .. } => header.names.iter().map(String::as_str).collect(),
        }
    }
}

/// Column `index` of a delimited record: empty is null, and a value holding the list
/// delimiter is a multi-value.
fn column<'a>(header: &'a Header, values: &'a csv::StringRecord, index: Option<usize>) -> FieldRef<'a> {
    match index.and_then(|i| values.get(i)) {
        None => FieldRef::Absent,
        Some("") => FieldRef::Null,
        Some(v) => match &header.list_delimiter {
            Some(d) if holds(v, d) => FieldRef::List(v.split(d.as_str()).collect()),
            _ => FieldRef::Text(v),
        },
    }
}

/// Whether `v` holds the delimiter `d`: a one-byte delimiter (Druid's default is `\u0001`) is
/// looked for as a byte, without setting up a substring search per field.
fn holds(v: &str, d: &str) -> bool {
    match d.as_bytes() {
        [b] => v.as_bytes().contains(b),
        _ => v.contains(d),
    }
}

/// The fields a reader keeps of each record, the others being skipped: a kept field is
/// found by its place in this list.
#[derive(Debug, PartialEq)]
pub struct Projection {
    /// Unique in the process: what a [`FieldSlot`] remembers the projection by.
    id: u64,
    names: Vec<String>,
    /// Bit `n` is set when a name is `n` bytes long (names of 128 bytes or more are always
    /// compared): most skipped keys are told apart by their length alone.
    lengths: u128,
}

impl Projection {
    pub fn new<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Projection {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        let lengths = names
            .iter()
            .fold(0u128, |bits, n| bits | 1u128.checked_shl(n.len() as u32).unwrap_or(0));
        Projection {
            id: next_source_id(),
            names,
            lengths,
        }
    }

    /// The place of `key` among the kept names.
    fn index(&self, key: &str) -> Option<usize> {
        let n = key.len();
        if n < 128 && self.lengths & (1 << n) == 0 {
            return None;
        }
        self.names.iter().position(|k| k == key)
    }
}

/// The keys of the last line read, by position, each with its place in the projection: lines
/// of one file mostly repeat their keys in the same order, so a key is usually told by one
/// comparison with the key at its position in the line before.
#[derive(Debug, Default)]
struct KnownKeys(Vec<(String, Option<usize>)>);

impl KnownKeys {
    fn index(&mut self, position: usize, key: &str, keep: &Projection) -> Option<usize> {
        if let Some((k, i)) = self.0.get(position) {
            if same_short(k.as_bytes(), key.as_bytes()) {
                return *i;
            }
        }
        let i = keep.index(key);
        // Positions come in order from 0, so a new one is the next.
        match self.0.get_mut(position) {
            Some(known) => *known = (key.to_string(), i),
            None => self.0.push((key.to_string(), i)),
        }
        i
    }
}

/// Whether `a` and `b` are equal, compared in at most two loads each when they are 4 to 16
/// bytes long (as keys mostly are) instead of a call to `memcmp`.
fn same_short(a: &[u8], b: &[u8]) -> bool {
    fn word(s: &[u8], at: usize) -> u64 {
        let mut w = [0; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_ne_bytes(w)
    }
    fn half(s: &[u8], at: usize) -> u32 {
        let mut w = [0; 4];
        w.copy_from_slice(&s[at..at + 4]);
        u32::from_ne_bytes(w)
    }
    let n = a.len();
    n == b.len()
        && match n {
            4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
            8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
            _ => a == b,
        }
}

/// JSON lines, read into one reused buffer.
struct JsonLines {
    reader: Box<dyn BufRead + Send>,
    line: String,
    line_no: u64,
    flatten: Option<Flatten>,
    keep: Option<Arc<Projection>>,
    known: KnownKeys,
    done: bool,
    /// Fields of the last line: room for the next.
    fields: usize,
}

impl Iterator for JsonLines {
    type Item = (u64, Result<Record, String>);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            self.line.clear();
            self.line_no += 1;
            match self.reader.read_line(&mut self.line) {
                Ok(0) => self.done = true,
                Ok(_) if self.line.trim().is_empty() => {}
                Ok(_) if self.flatten.is_none() => {
                    // The line moves into the record; the next starts with room for as long a
                    // line instead of growing from nothing.
                    let room = self.line.capacity();
                    let line = std::mem::replace(&mut self.line, String::with_capacity(room));
                    let record = LineRecord::parse(line, self.fields, self.keep.as_ref(), &mut self.known);
                    if let Ok(r) = &record {
                        self.fields = r.fields.len();
                    }
                    return Some((self.line_no, record.map(Record::Line)));
                }
                Ok(_) => return Some((self.line_no, parse_json_line(&self.line, self.flatten.as_ref()))),
                Err(e) => {
                    // An IO error (a truncated gzip stream, say) ends the stream.
                    self.done = true;
                    return Some((self.line_no, Err(format!("cannot read: {e}"))));
                }
            }
        }
        None
    }
}

/// A JSON object's text and its fields' places in it.
#[derive(Debug, Clone, PartialEq)]
pub struct LineRecord {
    text: String,
    /// In the line's order; with a projection, one per kept name, in the projection's order.
    fields: Vec<LineField>,
    keep: Option<Arc<Projection>>,
    /// Whether `text` is the line as read (else only the keys of a line that the general
    /// parser read).
    whole: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct LineField {
    key: (u32, u32),
    value: Slot,
}

#[derive(Debug, Clone, PartialEq)]
enum Slot {
    /// A string without escapes, at this span of the text.
    Text(u32, u32),
    /// Anything else, parsed.
    Value(Value),
    /// A kept name the line lacks.
    Absent,
}

/// One value of a JSON line, read in one pass: a string without escapes stays in the line's
/// text; anything else becomes a [`Value`] as `serde_json` reads it.
enum Parsed<'a> {
    Text(&'a str),
    Value(Value),
}

impl<'de> serde::Deserialize<'de> for Parsed<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Parsed<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Parsed<'de>, E> {
                Ok(Parsed::Text(s))
            }
            fn visit_str<E>(self, s: &str) -> Result<Parsed<'de>, E> {
                Ok(Parsed::Value(Value::String(s.to_string())))
            }
            fn visit_string<E>(self, s: String) -> Result<Parsed<'de>, E> {
                Ok(Parsed::Value(Value::String(s)))
            }
            fn visit_bool<E>(self, b: bool) -> Result<Parsed<'de>, E> {
                Ok(Parsed::Value(Value::Bool(b)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Parsed<'de>, E> {
                Ok(Parsed::Value(Value::from(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Parsed<'de>, E> {
                Ok(Parsed::Value(Value::from(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Parsed<'de>, E> {
                Ok(Parsed::Value(Value::from(v)))
            }
            fn visit_unit<E>(self) -> Result<Parsed<'de>, E> {
                Ok(Parsed::Value(Value::Null))
            }
            // Lists and objects are read by `Value`'s own deserializer.
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Parsed<'de>, A::Error> {
                <Value as serde::Deserialize>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(Parsed::Value)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<Parsed<'de>, A::Error> {
                <Value as serde::Deserialize>::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(Parsed::Value)
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads the fields of a JSON object line into [`LineField`]s: keys and plain strings as
/// places in the line's text (which starts at `base`), in one pass. Fields that `keep` does
/// not name are checked and skipped.
struct FieldsSeed<'k> {
    base: usize,
    capacity: usize,
    keep: Option<&'k Projection>,
    known: &'k mut KnownKeys,
}

impl<'de> serde::de::DeserializeSeed<'de> for FieldsSeed<'_> {
    type Value = Vec<LineField>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Vec<LineField>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FieldsSeed<'_> {
    type Value = Vec<LineField>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Vec<LineField>, A::Error> {
        let at = |s: &str| (s.as_ptr() as usize - self.base) as u32;
        let field = |k: &str, v: Parsed<'_>| LineField {
            key: (at(k), at(k) + k.len() as u32),
            value: match v {
                Parsed::Text(s) => Slot::Text(at(s), at(s) + s.len() as u32),
                Parsed::Value(v) => Slot::Value(v),
            },
        };
        let Some(keep) = self.keep else {
            let mut out = Vec::with_capacity(self.capacity);
            while let Some(k) = m.next_key::<&'de str>()? {
                let v = m.next_value::<Parsed<'de>>()?;
                out.push(field(k, v));
            }
            return Ok(out);
        };
        let mut out: Vec<LineField> = (0..keep.names.len())
            .map(|_| LineField {
                key: (0, 0),
                value: Slot::Absent,
            })
            .collect();
        let mut position = 0;
        while let Some(k) = m.next_key::<&'de str>()? {
            match self.known.index(position, k, keep) {
                // A repeated key overwrites: the last one counts.
                Some(i) => out[i] = field(k, m.next_value::<Parsed<'de>>()?),
                None => m.next_value::<serde::de::IgnoredAny>().map(drop)?,
            }
            position += 1;
        }
        Ok(out)
    }
}

impl LineRecord {
    /// Reads one JSON object line, each value once (of the fields `keep` names, if given);
    /// `fields`: how many the last line had, room to start with. Keys with escapes, and
    /// anything that is not an object, go through the general parser (which says what is
    /// wrong).
    fn parse(
        text: String,
        fields: usize,
        keep: Option<&Arc<Projection>>,
        known: &mut KnownKeys,
    ) -> Result<LineRecord, String> {
        use serde::de::DeserializeSeed;
        let seed = FieldsSeed {
            base: text.as_ptr() as usize,
            capacity: fields,
            keep: keep.map(|k| &**k),
            known,
        };
        let mut de = serde_json::Deserializer::from_str(&text);
        let parsed = seed.deserialize(&mut de).and_then(|f| de.end().map(|()| f));
        let fields = match parsed {
            Ok(f) => f,
            Err(_) => {
                return match parse_json_line(&text, None)? {
                    Record::Json(m) => Ok(LineRecord::from_map(m)),
                    _ => Err("not a JSON object".to_string()),
                }
            }
        };
        Ok(LineRecord {
            text,
            fields,
            keep: keep.cloned(),
            whole: true,
        })
    }

    /// The same record from an already parsed object (keys with escapes).
    fn from_map(m: Map<String, Value>) -> LineRecord {
        let mut text = String::new();
        let mut fields = Vec::with_capacity(m.len());
        for (k, v) in m {
            let start = text.len() as u32;
            text.push_str(&k);
            fields.push(LineField {
                key: (start, text.len() as u32),
                value: Slot::Value(v),
            });
        }
        LineRecord {
            text,
            fields,
            keep: None,
            whole: false,
        }
    }

    fn get(&self, name: &str) -> FieldRef<'_> {
        if let Some(keep) = &self.keep {
            return keep.index(name).map_or(FieldRef::Absent, |i| self.field(i));
        }
        let text = self.text.as_bytes();
        // The last of repeated keys, as a parsed object (and Druid's reader) keeps it.
        self.fields
            .iter()
            .rposition(|f| {
                let (a, b) = (f.key.0 as usize, f.key.1 as usize);
                b - a == name.len() && text.get(a..b) == Some(name.as_bytes())
            })
            .map_or(FieldRef::Absent, |i| self.field(i))
    }

    /// Field `i` of `fields`.
    fn field(&self, i: usize) -> FieldRef<'_> {
        match self.fields.get(i).map(|f| &f.value) {
            None | Some(Slot::Absent) => FieldRef::Absent,
            Some(Slot::Text(s, e)) => FieldRef::Text(&self.text[*s as usize..*e as usize]),
            Some(Slot::Value(Value::Null)) => FieldRef::Null,
            Some(Slot::Value(Value::String(s))) => FieldRef::Text(s),
            Some(Slot::Value(v)) => FieldRef::Json(v),
        }
    }

    /// The record as a parse exception report shows it: the line as read, or the object.
    pub fn shown(&self) -> String {
        if self.whole {
            self.text.trim().to_string()
        } else {
            self.to_json().to_string()
        }
    }

    /// The object as JSON.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        for f in &self.fields {
            let k = self.text[f.key.0 as usize..f.key.1 as usize].to_string();
            let v = match &f.value {
                Slot::Absent => continue,
                Slot::Text(s, e) => Value::String(self.text[*s as usize..*e as usize].to_string()),
                Slot::Value(v) => v.clone(),
            };
            m.insert(k, v);
        }
        Value::Object(m)
    }
}

struct DelimitedRecords {
    spec: Delimited,
    reader: csv::Reader<Box<dyn BufRead + Send>>,
    header: Option<Arc<Header>>,
    skipped: usize,
    record: csv::StringRecord,
    /// Set after an IO error, which ends the stream.
    done: bool,
}

impl DelimitedRecords {
    fn new(spec: Delimited, reader: Box<dyn BufRead + Send>) -> DelimitedRecords {
        let reader = csv::ReaderBuilder::new()
            .delimiter(spec.delimiter)
            .has_headers(false)
            .flexible(true)
            .quoting(spec.delimiter == b',')
            .from_reader(reader);
        let header = spec
            .columns
            .clone()
            .map(|c| Arc::new(Header::new(c, spec.list_delimiter.clone())));
        DelimitedRecords {
            spec,
            reader,
            header,
            skipped: 0,
            record: csv::StringRecord::new(),
            done: false,
        }
    }
}

impl Iterator for DelimitedRecords {
    type Item = (u64, Result<Record, String>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            let read = self.reader.read_record(&mut self.record);
            let line = self.record.position().map(|p| p.line()).unwrap_or(0);
            match read {
                Err(e) => {
                    // An IO error ends the stream; a malformed record is reported and skipped.
                    if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                        self.done = true;
                        return Some((line, Err(format!("cannot read: {e}"))));
                    }
                    return Some((line, Err(format!("malformed record: {e}"))));
                }
                Ok(false) => return None,
                Ok(true) => {}
            }
            if self.skipped < self.spec.skip_header_rows {
                self.skipped += 1;
                continue;
            }
            if self.header.is_none() {
                let names: Vec<String> = self.record.iter().map(str::to_string).collect();
                self.header = Some(Arc::new(Header::new(names, self.spec.list_delimiter.clone())));
                continue;
            }
            if self.record.len() == 1 && self.record.get(0) == Some("") {
                continue;
            }
            let header = self.header.clone()?;
            // The record's one buffer moves into the row; the reader starts a new one as large.
            let room = csv::StringRecord::with_capacity(self.record.as_slice().len(), self.record.len());
            let values = std::mem::replace(&mut self.record, room);
            return Some((line, Ok(Record::Columns { header, values })));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use serde_json::json;

    use super::*;

    fn read(format: Value, text: &str) -> Vec<(u64, Result<Record, String>)> {
        let f = InputFormat::parse(&format).unwrap();
        f.records(Box::new(Cursor::new(text.as_bytes().to_vec())), None)
            .collect()
    }

    #[test]
    fn values_read_in_one_pass_equal_the_parsers_reading() {
        for r in [
            "0",
            "7",
            "-12",
            "-0",
            "1.5",
            "1e3",
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551615",
            "true",
            "false",
            "null",
            "\"t\\u00e9\"",
            "[1, \"a\", [null]]",
            "{\"a\": {\"b\": 2.5}}",
        ] {
            let line = format!("{{\"skipped\": {r}, \"f\": {r}}}");
            let expected: Value = serde_json::from_str(r).unwrap();
            // Read whole, and with only `f` kept.
            let keep = Arc::new(Projection::new(["f"]));
            for keep in [None, Some(&keep)] {
                let parsed = LineRecord::parse(line.clone(), 0, keep, &mut KnownKeys::default());
                let Ok(record) = parsed.map(Record::Line) else {
                    panic!("{line}")
                };
                assert_eq!(record.names().len(), if keep.is_some() { 1 } else { 2 });
                let Record::Line(l) = record else { unreachable!() };
                assert_eq!(l.to_json()["f"], expected, "{r}");
            }
        }
    }

    #[test]
    fn json_lines_with_flatten_paths() {
        let out = read(
            json!({"type": "json", "flattenSpec": {"fields": [
                {"type": "path", "name": "city", "expr": "$.geo.city"},
                {"type": "path", "name": "first", "expr": "$['tags'][0]"},
                {"type": "root", "name": "n"}]}}),
            "{\"n\": 1, \"geo\": {\"city\": \"Oslo\"}, \"tags\": [\"a\", \"b\"]}\n\nnot json\n",
        );
        assert_eq!(out.len(), 2);
        let Ok(r) = &out[0].1 else { panic!() };
        assert_eq!(r.get("city"), FieldRef::Text("Oslo"));
        assert_eq!(r.get("first"), FieldRef::Text("a"));
        assert_eq!(r.get("n"), FieldRef::Json(&json!(1)));
        assert_eq!(r.get("geo"), FieldRef::Absent);
        assert!(out[1].1.is_err());
        assert_eq!(out[1].0, 3);
    }

    #[test]
    fn json_lines_without_flatten_read_strings_in_place_and_parse_the_rest() {
        let out = read(
            json!({"type": "json"}),
            "{\"a\": \"plain\", \"b\": \"t\\u00e9\\n\", \"n\": -1.5, \"x\": null, \"l\": [\"p\", 2], \"e\": \"\"}\n\
             {\"k\\u0065y\": \"escaped key\"}\n[1, 2]\n",
        );
        let Ok(r) = &out[0].1 else { panic!("{:?}", out[0]) };
        assert!(matches!(r, Record::Line(_)));
        assert_eq!(r.get("a"), FieldRef::Text("plain"));
        assert_eq!(r.get("b"), FieldRef::Text("t\u{e9}\n"));
        assert_eq!(r.get("n"), FieldRef::Json(&json!(-1.5)));
        assert_eq!(r.get("x"), FieldRef::Null);
        assert_eq!(r.get("l"), FieldRef::Json(&json!(["p", 2])));
        assert_eq!(r.get("e"), FieldRef::Text(""));
        assert_eq!(r.get("zz"), FieldRef::Absent);
        assert_eq!(r.names(), ["a", "b", "n", "x", "l", "e"]);
        let Ok(r) = &out[1].1 else { panic!("{:?}", out[1]) };
        assert_eq!(r.get("key"), FieldRef::Text("escaped key"));
        assert_eq!(out[2].1, Err("not a JSON object".to_string()));
    }

    /// With a projection, a line's other fields are skipped (but still must be valid JSON), the
    /// kept ones read as without it, and a report shows the whole line.
    #[test]
    fn json_lines_keep_only_the_projected_fields() {
        let f = InputFormat::parse(&json!({"type": "json"})).unwrap();
        let text = "{\"a\": \"x\", \"skip\": {\"deep\": [1, \"s\"]}, \"n\": 2, \"bb\": true, \"n\": 3}\n\
                    {\"a\": \"x\", \"skip\": [1,, 2]}\n\
                    {\"\\u0061\": \"escaped\", \"skip\": 1}\n\
                    {\"n\": 5, \"zz\": 1, \"a\": \"z\"}\n\
                    {\"zz\": \"n\", \"a\": \"only\"}\n";
        let keep = Arc::new(Projection::new(["a", "n", "missing"]));
        let out: Vec<_> = f
            .records(Box::new(Cursor::new(text.as_bytes().to_vec())), Some(keep))
            .collect();
        let Ok(r) = &out[0].1 else { panic!("{:?}", out[0]) };
        assert_eq!(r.get("a"), FieldRef::Text("x"));
        assert_eq!(r.get("n"), FieldRef::Json(&json!(3)));
        assert_eq!(r.get("skip"), FieldRef::Absent);
        assert_eq!(r.get("bb"), FieldRef::Absent);
        assert_eq!(r.names(), ["a", "n"]);
        assert_eq!(crate::rows::show(r), text.lines().next().unwrap());
        assert!(out[1].1.is_err(), "a skipped field is still checked: {:?}", out[1]);
        // A line with an escaped key goes through the general parser, which keeps everything.
        let Ok(r) = &out[2].1 else { panic!("{:?}", out[2]) };
        assert_eq!(r.get("a"), FieldRef::Text("escaped"));
        // Keys in another order, or other keys at the same places, than the line before.
        let fields = |i: usize| {
            let r = out[i].1.as_ref().unwrap();
            let mut slot = FieldSlot::default();
            let cached = r.get_cached("a", &mut slot);
            assert_eq!(cached, r.get("a"));
            (cached, r.get("n"), r.get("zz"))
        };
        assert_eq!(
            fields(3),
            (FieldRef::Text("z"), FieldRef::Json(&json!(5)), FieldRef::Absent)
        );
        assert_eq!(fields(4), (FieldRef::Text("only"), FieldRef::Absent, FieldRef::Absent));
        let all = read(json!({"type": "json"}), text);
        assert_eq!(all[0].1.as_ref().unwrap().names().len(), 5);
    }

    proptest::proptest! {
        #[test]
        fn short_strings_compare_as_slices_do(a in proptest::collection::vec(0u8..3, 0..20), flip in proptest::option::of(0usize..20)) {
            let mut b = a.clone();
            if let Some(i) = flip.filter(|i| *i < b.len()) {
                b[i] ^= 1;
            }
            proptest::prop_assert_eq!(same_short(&a, &b), a == b);
            proptest::prop_assert_eq!(same_short(&a, &b[..b.len().saturating_sub(1)]), a[..] == b[..b.len().saturating_sub(1)]);
        }
    }

    #[test]
    fn list_delimiters_of_one_byte_and_more_are_found() {
        for (v, d, found) in [
            ("a|b", "|", true),
            ("ab", "|", false),
            ("x\u{1}y", "\u{1}", true),
            ("\u{e9}t\u{e9}", "\u{1}", false),
            ("a::b", "::", true),
            ("a:b:", "::", false),
            ("a\u{e9}b", "\u{e9}", true),
        ] {
            assert_eq!(holds(v, d), found, "{v:?} {d:?}");
        }
    }

    #[test]
    fn a_projection_tells_names_apart_by_length_and_bytes() {
        let long = "k".repeat(200);
        let p = Projection::new(["ab", "abc", long.as_str(), ""]);
        for (key, place) in [
            ("ab", Some(0)),
            ("ba", None),
            ("abc", Some(1)),
            ("abd", None),
            ("a", None),
            ("", Some(3)),
        ] {
            assert_eq!(p.index(key), place, "{key}");
        }
        assert_eq!(p.index(&long), Some(2));
        assert_eq!(p.index(&"k".repeat(199)), None);
        assert_eq!(p.index(&"j".repeat(200)), None);
    }

    /// A key given twice has its last value, whether the line is read in place or, with an
    /// escaped key, through the general parser.
    #[test]
    fn repeated_json_keys_keep_the_last_value() {
        let out = read(
            json!({"type": "json"}),
            "{\"a\": \"x\", \"n\": 1, \"a\": \"y\"}\n{\"\\u0061\": \"x\", \"a\": \"y\"}\n",
        );
        for (_, r) in &out {
            let r = r.as_ref().unwrap();
            assert_eq!(r.get("a"), FieldRef::Text("y"), "{r:?}");
        }
    }

    #[test]
    fn csv_with_header_lists_and_skipped_rows() {
        let out = read(
            json!({"type": "csv", "findColumnsFromHeader": true, "skipHeaderRows": 1, "listDelimiter": "|"}),
            "junk line\nts,page,tags\n2024-01-01,\"Main, Page\",a|b\n2024-01-02,,c\n",
        );
        assert_eq!(out.len(), 2);
        let Ok(r) = &out[0].1 else { panic!() };
        assert_eq!(r.get("page"), FieldRef::Text("Main, Page"));
        assert_eq!(r.get("tags"), FieldRef::List(vec!["a", "b"]));
        assert_eq!(out[0].0, 3);
        let Ok(r) = &out[1].1 else { panic!() };
        assert_eq!(r.get("page"), FieldRef::Null);
        assert_eq!(r.get("nope"), FieldRef::Absent);
    }

    /// A field's place is remembered per header: files whose headers order the columns
    /// differently are each read right with the same slot, whichever comes first.
    #[test]
    fn cached_field_places_follow_each_files_header() {
        let format = json!({"type": "csv", "findColumnsFromHeader": true});
        let a = read(format.clone(), "t,page,n\n1,Main,3\n2,Talk,4\n");
        let b = read(format, "page,t\nHelp,9\n");
        let mut page = FieldSlot::default();
        let mut n = FieldSlot::default();
        for (records, pages, ns) in [
            (&a, vec!["Main", "Talk"], vec![FieldRef::Text("3"), FieldRef::Text("4")]),
            (&b, vec!["Help"], vec![FieldRef::Absent]),
            (&a, vec!["Main", "Talk"], vec![FieldRef::Text("3"), FieldRef::Text("4")]),
        ] {
            for ((_, r), (p, expected_n)) in records.iter().zip(pages.iter().zip(ns)) {
                let r = r.as_ref().unwrap();
                assert_eq!(r.get_cached("page", &mut page), FieldRef::Text(p));
                assert_eq!(r.get_cached("page", &mut page), r.get("page"));
                assert_eq!(r.get_cached("n", &mut n), expected_n);
            }
        }
    }

    #[test]
    fn tsv_with_columns() {
        let out = read(json!({"type": "tsv", "columns": ["a", "b"]}), "1\tx\"y\n");
        let Ok(r) = &out[0].1 else { panic!() };
        assert_eq!(r.get("b"), FieldRef::Text("x\"y"));
    }

    #[test]
    fn bad_formats_name_their_field() {
        let err = |v: Value| InputFormat::parse(&v).unwrap_err().0;
        assert_eq!(err(json!({"type": "csv"})), "columns");
        assert_eq!(err(json!({"type": "xml"})), "type");
        assert_eq!(
            err(json!({"type": "tsv", "columns": ["a"], "delimiter": "ab"})),
            "delimiter"
        );
        assert_eq!(
            err(json!({"type": "json", "flattenSpec": {"fields": [{"type": "path", "name": "x", "expr": "a.b"}]}})),
            "flattenSpec.fields[0].expr"
        );
        assert!(parse_json_path("$.a.*").is_err());
    }
}
