//! The wire format: pprof's `profile.proto` as Rust types, and a walk over
//! the raw protobuf that counts what decoding it would allocate.
//!
//! In: the inflated protobuf bytes of one profile. Out: the message types
//! ([`Profile`] and the messages it holds), which `prost` fills in
//! `decode.rs`, and, before that, [`walk`], which reports to a [`Tally`]
//! every `Vec` and string the decoder would create and how long each would
//! be, at every depth (samples and their location ids, values and labels;
//! locations and their lines; the string table; …). The walk allocates
//! nothing, so a hostile body is priced before a byte of it is decoded.
//!
//! The messages are hand-written `prost` derives of upstream's
//! `profile.proto` (package `perftools.profiles`, field numbers as there):
//! no `protoc`, no build script.

use prost::Message;

/// `perftools.profiles.Profile`: the whole profile.
#[derive(Clone, PartialEq, Message)]
pub struct Profile {
    /// What each `Sample.value` entry measures, e.g. `inuse_space`/`bytes`.
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    /// All strings of the profile; other fields hold indexes into it.
    /// `string_table[0]` should be `""`.
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    /// Index into the string table.
    #[prost(int64, tag = "7")]
    pub drop_frames: i64,
    /// Index into the string table.
    #[prost(int64, tag = "8")]
    pub keep_frames: i64,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    /// Indexes into the string table.
    #[prost(int64, repeated, packed = "true", tag = "13")]
    pub comment: Vec<i64>,
    /// Index into the string table of the preferred sample type's name.
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

/// `perftools.profiles.ValueType`: the name and unit of a measure.
#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    /// Index into the string table, e.g. `inuse_space`.
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    /// Index into the string table, e.g. `bytes`.
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

/// `perftools.profiles.Sample`: one stack and its values.
#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    /// Location ids, leaf first.
    #[prost(uint64, repeated, packed = "true", tag = "1")]
    pub location_id: Vec<u64>,
    /// One value per `Profile.sample_type`.
    #[prost(int64, repeated, packed = "true", tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

/// `perftools.profiles.Label`: a key with a string or a number.
#[derive(Clone, PartialEq, Message)]
pub struct Label {
    /// Index into the string table.
    #[prost(int64, tag = "1")]
    pub key: i64,
    /// Index into the string table.
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
    /// Index into the string table.
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

/// `perftools.profiles.Mapping`: a binary or library mapped into memory.
#[derive(Clone, PartialEq, Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    /// Index into the string table.
    #[prost(int64, tag = "5")]
    pub filename: i64,
    /// Index into the string table.
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

/// `perftools.profiles.Location`: a program counter and the source lines
/// (inlined callee first, caller last) it stands for.
#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
    #[prost(bool, tag = "5")]
    pub is_folded: bool,
}

/// `perftools.profiles.Line`: one function and line of a location.
#[derive(Clone, PartialEq, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
    #[prost(int64, tag = "3")]
    pub column: i64,
}

/// `perftools.profiles.Function`.
#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Index into the string table, e.g. `main.(*cache).put`.
    #[prost(int64, tag = "2")]
    pub name: i64,
    /// Index into the string table.
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    /// Index into the string table.
    #[prost(int64, tag = "4")]
    pub filename: i64,
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

// ---------------------------------------------------------------------------
// The walk
// ---------------------------------------------------------------------------

/// A repeated field of `profile.proto`: each is one `Vec` per message that
/// holds it (one `Profile.sample`, but a `Sample.label` per sample).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Repeated {
    SampleType,
    Sample,
    Mapping,
    Location,
    Function,
    String,
    Comment,
    LocationId,
    Value,
    Label,
    Line,
}

impl Repeated {
    pub(crate) const ALL: [Repeated; 11] = [
        Repeated::SampleType,
        Repeated::Sample,
        Repeated::Mapping,
        Repeated::Location,
        Repeated::Function,
        Repeated::String,
        Repeated::Comment,
        Repeated::LocationId,
        Repeated::Value,
        Repeated::Label,
        Repeated::Line,
    ];

    /// What the elements are called in messages to people.
    pub(crate) fn noun(self) -> &'static str {
        match self {
            Repeated::SampleType => "sample types",
            Repeated::Sample => "Sample entries",
            Repeated::Mapping => "Mapping entries",
            Repeated::Location => "Location entries",
            Repeated::Function => "Function entries",
            Repeated::String => "string table entries",
            Repeated::Comment => "comments",
            Repeated::LocationId => "Sample location ids",
            Repeated::Value => "Sample values",
            Repeated::Label => "Label entries",
            Repeated::Line => "Line entries",
        }
    }

    /// Position in [`Repeated::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Receives what [`walk`] finds.
pub(crate) trait Tally {
    /// One `Vec` of `field` that decoding creates, holding `len` elements
    /// (called for every such `Vec`, also when `len` is 0).
    fn vec(&mut self, field: Repeated, len: u64);
    /// One string of the string table, `len` bytes long.
    fn string(&mut self, len: u64);
}

/// Why [`walk`] stopped: the bytes are not a protobuf message `prost` would
/// decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed protobuf at byte {at}: {what}")]
pub(crate) struct WireError {
    /// Offset in the inflated bytes.
    pub(crate) at: usize,
    pub(crate) what: &'static str,
}

/// How deep groups of unknown fields may nest (prost's own limit).
const MAX_DEPTH: u32 = 100;

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const I32: u8 = 5;

/// Walks a `Profile` message and reports every `Vec` and string its
/// decoding would allocate. Framing that `prost` would refuse is an error
/// here too, so nothing the decoder accepts goes uncounted.
pub(crate) fn walk(raw: &[u8], tally: &mut impl Tally) -> Result<(), WireError> {
    let mut r = Reader { buf: raw, pos: 0 };
    let mut n = [0u64; Repeated::ALL.len()];
    while !r.done() {
        let (field, wire) = r.key()?;
        let (what, how_many) = match (field, wire) {
            (1, LEN) => (Repeated::SampleType, r.skip_len().map(|_| 1)?),
            (2, LEN) => (
                Repeated::Sample,
                walk_sample(r.bytes()?, r.pos, tally).map(|_| 1)?,
            ),
            (3, LEN) => (Repeated::Mapping, r.skip_len().map(|_| 1)?),
            (4, LEN) => (
                Repeated::Location,
                walk_location(r.bytes()?, r.pos, tally).map(|_| 1)?,
            ),
            (5, LEN) => (Repeated::Function, r.skip_len().map(|_| 1)?),
            (6, LEN) => {
                tally.string(r.bytes()?.len() as u64);
                (Repeated::String, 1)
            }
            (13, LEN) => (Repeated::Comment, r.packed()?),
            (13, VARINT) => (Repeated::Comment, r.varint().map(|_| 1)?),
            // Scalars and the one optional message: nothing to allocate.
            (7..=10 | 12 | 14, VARINT) => (Repeated::Comment, r.varint().map(|_| 0)?),
            (11, LEN) => (Repeated::Comment, r.skip_len().map(|_| 0)?),
            (1..=14, _) => return Err(r.error("a known field has the wrong wire type")),
            _ => (Repeated::Comment, r.skip(field, wire, 0).map(|_| 0)?),
        };
        n[what.index()] += how_many;
    }
    for f in &Repeated::ALL[..=Repeated::Comment.index()] {
        tally.vec(*f, n[f.index()]);
    }
    Ok(())
}

/// One `Sample`: its location ids, values and labels.
fn walk_sample(buf: &[u8], end: usize, tally: &mut impl Tally) -> Result<(), WireError> {
    let mut r = Reader::nested(buf, end);
    let (mut ids, mut values, mut labels) = (0u64, 0u64, 0u64);
    while !r.done() {
        let (field, wire) = r.key()?;
        match (field, wire) {
            (1, LEN) => ids += r.packed()?,
            (1, VARINT) => r.varint().map(|_| ids += 1)?,
            (2, LEN) => values += r.packed()?,
            (2, VARINT) => r.varint().map(|_| values += 1)?,
            (3, LEN) => r.skip_len().map(|_| labels += 1)?,
            (1..=3, _) => return Err(r.error("a Sample field has the wrong wire type")),
            _ => r.skip(field, wire, 1)?,
        }
    }
    tally.vec(Repeated::LocationId, ids);
    tally.vec(Repeated::Value, values);
    tally.vec(Repeated::Label, labels);
    Ok(())
}

/// One `Location`: its lines.
fn walk_location(buf: &[u8], end: usize, tally: &mut impl Tally) -> Result<(), WireError> {
    let mut r = Reader::nested(buf, end);
    let mut lines = 0u64;
    while !r.done() {
        let (field, wire) = r.key()?;
        match (field, wire) {
            (4, LEN) => r.skip_len().map(|_| lines += 1)?,
            (1..=3 | 5, VARINT) => r.varint().map(drop)?,
            (1..=5, _) => return Err(r.error("a Location field has the wrong wire type")),
            _ => r.skip(field, wire, 1)?,
        }
    }
    tally.vec(Repeated::Line, lines);
    Ok(())
}

/// A cursor over one message's bytes. `pos` counts from the start of the
/// whole profile, so errors point at the right byte at any depth.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A cursor over a sub-message that ends at offset `end`.
    fn nested(buf: &'a [u8], end: usize) -> Self {
        Reader {
            buf,
            pos: end - buf.len(),
        }
    }

    fn error(&self, what: &'static str) -> WireError {
        WireError { at: self.pos, what }
    }

    fn done(&self) -> bool {
        self.buf.is_empty()
    }

    fn advance(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        self.pos += n;
        head
    }

    /// A varint as prost reads it: at most 10 bytes, the last one at most 1.
    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for (i, &b) in self.buf.iter().enumerate().take(10) {
            if i == 9 && b > 1 {
                return Err(self.error("a varint overflows 64 bits"));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.advance(i + 1);
                return Ok(value);
            }
        }
        // Ten bytes would have ended above, by value or by overflow.
        Err(self.error("a varint runs past the end of its message"))
    }

    /// A field key: (field number, wire type).
    fn key(&mut self) -> Result<(u32, u8), WireError> {
        let key = self.varint()?;
        let key = u32::try_from(key).map_err(|_| self.error("a field key is over 32 bits"))?;
        let wire = (key & 7) as u8;
        if wire > I32 {
            return Err(self.error("a wire type is not 0 to 5"));
        }
        if key >> 3 == 0 {
            return Err(self.error("a field number is 0"));
        }
        Ok((key >> 3, wire))
    }

    /// The payload of a length-delimited field.
    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.varint()?;
        match usize::try_from(len) {
            Ok(len) if len <= self.buf.len() => Ok(self.advance(len)),
            _ => Err(self.error("a length runs past the end of its message")),
        }
    }

    fn skip_len(&mut self) -> Result<(), WireError> {
        self.bytes().map(drop)
    }

    /// Counts the varints of a packed repeated field.
    fn packed(&mut self) -> Result<u64, WireError> {
        let payload = self.bytes()?;
        let mut inner = Reader::nested(payload, self.pos);
        let mut n = 0u64;
        while !inner.done() {
            inner.varint()?;
            n += 1;
        }
        Ok(n)
    }

    /// Skips a field the walk does not count, groups included (prost skips
    /// unknown fields the same way).
    fn skip(&mut self, field: u32, wire: u8, depth: u32) -> Result<(), WireError> {
        match wire {
            VARINT => self.varint().map(drop),
            I64 | I32 => {
                let n = if wire == I64 { 8 } else { 4 };
                if self.buf.len() < n {
                    return Err(self.error("a fixed-size field runs past the end"));
                }
                self.advance(n);
                Ok(())
            }
            LEN => self.skip_len(),
            START_GROUP => {
                if depth >= MAX_DEPTH {
                    return Err(self.error("groups nest too deep"));
                }
                loop {
                    if self.done() {
                        return Err(self.error("a group has no end"));
                    }
                    let (inner, w) = self.key()?;
                    if w == END_GROUP {
                        if inner != field {
                            return Err(self.error("a group ends with another field's tag"));
                        }
                        return Ok(());
                    }
                    self.skip(inner, w, depth + 1)?;
                }
            }
            _ => Err(self.error("a group ends where none began")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers every call, so a test can check what the walk saw.
    #[derive(Debug, Default)]
    struct Seen {
        vecs: Vec<(Repeated, u64)>,
        strings: Vec<u64>,
    }

    impl Tally for Seen {
        fn vec(&mut self, field: Repeated, len: u64) {
            self.vecs.push((field, len));
        }
        fn string(&mut self, len: u64) {
            self.strings.push(len);
        }
    }

    fn seen(raw: &[u8]) -> Result<Seen, WireError> {
        let mut s = Seen::default();
        walk(raw, &mut s).map(|_| s)
    }

    fn lens(s: &Seen, f: Repeated) -> Vec<u64> {
        s.vecs.iter().filter(|v| v.0 == f).map(|v| v.1).collect()
    }

    #[test]
    fn counts_every_vec_at_every_depth() {
        let p = Profile {
            sample_type: vec![ValueType::default(); 2],
            sample: vec![
                Sample {
                    location_id: vec![1, 2, 300],
                    value: vec![4, -5],
                    label: vec![Label::default(); 3],
                },
                Sample::default(),
            ],
            location: vec![
                Location {
                    id: 1,
                    line: vec![Line::default(); 4],
                    ..Default::default()
                },
                Location::default(),
            ],
            function: vec![Function::default(); 5],
            mapping: vec![Mapping::default()],
            string_table: vec!["".into(), "main.f".into()],
            comment: vec![1, 1],
            ..Default::default()
        };
        let s = seen(&p.encode_to_vec()).unwrap();
        assert_eq!(lens(&s, Repeated::Sample), [2]);
        assert_eq!(lens(&s, Repeated::SampleType), [2]);
        assert_eq!(lens(&s, Repeated::LocationId), [3, 0]);
        assert_eq!(lens(&s, Repeated::Value), [2, 0]);
        assert_eq!(lens(&s, Repeated::Label), [3, 0]);
        assert_eq!(lens(&s, Repeated::Location), [2]);
        assert_eq!(lens(&s, Repeated::Line), [4, 0]);
        assert_eq!(lens(&s, Repeated::Function), [5]);
        assert_eq!(lens(&s, Repeated::Mapping), [1]);
        assert_eq!(lens(&s, Repeated::String), [2]);
        assert_eq!(lens(&s, Repeated::Comment), [2]);
        assert_eq!(s.strings, [0, 6]);
    }

    #[test]
    fn unpacked_and_split_repeated_scalars_add_up() {
        // One sample: location ids 7 and 8 unpacked, then [9, 10] packed;
        // one value unpacked. All land in the same Vec, as prost decodes.
        let sample = [0x08, 0x07, 0x08, 0x08, 0x0a, 0x02, 0x09, 0x0a, 0x10, 0x01];
        let mut raw = vec![0x12, sample.len() as u8];
        raw.extend_from_slice(&sample);
        let s = seen(&raw).unwrap();
        assert_eq!(lens(&s, Repeated::LocationId), [4]);
        assert_eq!(lens(&s, Repeated::Value), [1]);
        let p = Profile::decode(raw.as_slice()).unwrap();
        assert_eq!(p.sample[0].location_id, [7, 8, 9, 10]);
    }

    #[test]
    fn unknown_fields_and_groups_are_skipped_like_prost() {
        // Field 99 as a group holding a nested group and a varint, then a
        // real sample; then an unknown fixed64 and fixed32.
        let mut raw = vec![0x9b, 0x06]; // 99, START_GROUP
        raw.extend_from_slice(&[0xa3, 0x06, 0xa4, 0x06]); // 100 start, 100 end
        raw.extend_from_slice(&[0x08, 0x01]); // 1: varint inside the group
        raw.extend_from_slice(&[0x9c, 0x06]); // 99, END_GROUP
        raw.extend_from_slice(&[0x12, 0x00]); // one empty sample
        raw.extend_from_slice(&[0xa9, 0x06, 1, 2, 3, 4, 5, 6, 7, 8]); // 101 fixed64
        raw.extend_from_slice(&[0xb5, 0x06, 1, 2, 3, 4]); // 102 fixed32
        let s = seen(&raw).unwrap();
        assert_eq!(lens(&s, Repeated::Sample), [1]);
        assert_eq!(Profile::decode(raw.as_slice()).unwrap().sample.len(), 1);
    }

    #[test]
    fn framing_prost_refuses_is_refused() {
        let cases: &[(&[u8], &str)] = &[
            (&[0x12, 0x05, 0x00], "a length runs past"),
            (&[0x12], "runs past the end"),
            (&[0x00, 0x00], "field number is 0"),
            (&[0x0f], "wire type"),
            (&[0x10, 0x01], "wrong wire type"), // sample_type as a varint
            (&[0x12, 0x02, 0x18, 0x01], "Sample field"), // label as a varint
            (&[0x22, 0x02, 0x20, 0x01], "Location field"), // line as a varint
            (&[0x9c, 0x06], "ends where none began"),
            (&[0x9b, 0x06, 0x08, 0x01], "no end"),
            (&[0x9b, 0x06, 0xa4, 0x06], "another field's tag"),
            (&[0x6a, 0x01, 0x80], "runs past the end"), // packed comment cut
            (
                &[
                    0x48, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
                ],
                "overflows",
            ),
        ];
        for (raw, want) in cases {
            let err = seen(raw)
                .err()
                .unwrap_or_else(|| panic!("{raw:02x?} was accepted"));
            assert!(err.to_string().contains(want), "{raw:02x?}: {err}");
            assert!(Profile::decode(*raw).is_err(), "prost accepts {raw:02x?}");
        }
        // Groups nested past prost's limit.
        let mut deep = Vec::new();
        for _ in 0..=MAX_DEPTH {
            deep.extend_from_slice(&[0x9b, 0x06]);
        }
        assert!(seen(&deep).unwrap_err().to_string().contains("too deep"));
    }

    #[test]
    fn errors_point_at_the_byte_in_the_whole_profile() {
        // A sample at offset 2 whose packed location ids are cut.
        let raw = [0x12, 0x00, 0x12, 0x03, 0x0a, 0x01, 0x80];
        let err = seen(&raw).unwrap_err();
        assert_eq!(err.at, 6, "{err}");
    }
}
