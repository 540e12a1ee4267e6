//! Names for a decoded profile's stacks.
//!
//! In: a decoded [`Profile`]: its string table, locations, functions and
//! samples. Out: [`Symbols`], which gives each sample its frames (interned
//! name ids, leaf first, an inlined callee before its caller), and the
//! names as text for people, cut to [`MAX_NAME_BYTES`].
//!
//! Names, not ids, identify a function: ids differ between profiles, and
//! one profile may hold several `Function`s of one name. Names borrow the
//! profile's string table instead of copying it.
//!
//! Nothing here panics on malformed input: an index that points nowhere
//! becomes a placeholder name (`<bad string index 7>`, `<missing location
//! 12>`, …). A hostile profile could make a placeholder per line, so past
//! [`MAX_PLACEHOLDERS`] distinct ones they share one name; and a sample's
//! frames stop at [`MAX_SAMPLE_FRAMES`]. What the tables here can cost is
//! priced by [`working_set`], before the profile is decoded.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::{self, Write};
use std::hash::{Hash, Hasher};
use std::mem::size_of;

use super::decode::{grown_vec, heap_block, Estimate};
use super::wire::Repeated;
use super::{Profile, Sample, ValueType};

/// The most frames gathered for one sample (Go records at most 128 per
/// stack; summaries show 64).
pub(crate) const MAX_SAMPLE_FRAMES: usize = 1024;

/// Distinct placeholder names kept apart; past this many, the rest share
/// [`Name::MoreBadReferences`]. Real Go profiles have none.
pub(crate) const MAX_PLACEHOLDERS: usize = 1024;

/// Names shown to people are cut to this many bytes (Go names, generics
/// included, are far shorter; a string table entry can be megabytes).
pub(crate) const MAX_NAME_BYTES: usize = 1024;

/// The string at `index` of the string table, if there is one.
pub(crate) fn str_at(p: &Profile, index: i64) -> Option<&str> {
    usize::try_from(index)
        .ok()
        .and_then(|i| p.string_table.get(i))
        .map(String::as_str)
}

/// `s` cut to [`MAX_NAME_BYTES`] at a character boundary, the cut marked
/// with `…`.
pub(crate) fn for_people(s: &str) -> String {
    if s.len() <= MAX_NAME_BYTES {
        return s.to_string();
    }
    let mut end = MAX_NAME_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The string at `index`, for people: cut, or a placeholder.
pub(crate) fn string_for_people(p: &Profile, index: i64) -> String {
    str_at(p, index).map_or_else(|| format!("<bad string index {index}>"), for_people)
}

/// `type/unit` of a sample type, e.g. `inuse_space/bytes`.
pub(crate) fn value_type_name(p: &Profile, vt: &ValueType) -> String {
    format!(
        "{}/{}",
        string_for_people(p, vt.r#type),
        string_for_people(p, vt.unit)
    )
}

/// A function name as the summaries know it: borrowed from the string
/// table, or a placeholder for a reference that points nowhere.
///
/// Two names are equal when their texts are, whatever their kind: a
/// function literally named `0x10` is the address `0x10`, as it was when
/// names were plain strings.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Name<'p> {
    Str(&'p str),
    /// An unsymbolised location: its address.
    Address(u64),
    BadString(i64),
    UnnamedFunction(u64),
    MissingFunction(u64),
    LocationWithoutLines(u64),
    MissingLocation(u64),
    MoreBadReferences,
}

impl<'p> Name<'p> {
    fn is_placeholder(self) -> bool {
        !matches!(
            self,
            Name::Str(_) | Name::Address(_) | Name::MoreBadReferences
        )
    }

    /// The whole name as text.
    pub(crate) fn text(self) -> Cow<'p, str> {
        match self {
            Name::Str(s) => Cow::Borrowed(s),
            Name::MoreBadReferences => Cow::Borrowed(MORE_BAD_REFERENCES),
            other => Cow::Owned(other.to_string()),
        }
    }

    /// Calls `f` with the text, a placeholder rendered on the stack.
    fn with_text<R>(self, f: impl FnOnce(&str) -> R) -> R {
        if let Name::Str(s) = self {
            return f(s);
        }
        let mut text = StackText::default();
        // Every placeholder fits (the longest is 45 bytes).
        let _ = write!(text, "{self}");
        f(text.as_str())
    }
}

const MORE_BAD_REFERENCES: &str = "<more bad references>";

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Name::Str(s) => f.write_str(s),
            Name::Address(a) => write!(f, "{a:#x}"),
            Name::BadString(i) => write!(f, "<bad string index {i}>"),
            Name::UnnamedFunction(id) => write!(f, "<unnamed function {id}>"),
            Name::MissingFunction(id) => write!(f, "<missing function {id}>"),
            Name::LocationWithoutLines(id) => write!(f, "<location {id} without lines>"),
            Name::MissingLocation(id) => write!(f, "<missing location {id}>"),
            Name::MoreBadReferences => f.write_str(MORE_BAD_REFERENCES),
        }
    }
}

impl PartialEq for Name<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.with_text(|a| other.with_text(|b| a == b))
    }
}

impl Eq for Name<'_> {}

impl Hash for Name<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.with_text(|t| t.hash(state));
    }
}

/// A short text built on the stack.
struct StackText {
    bytes: [u8; 64],
    len: usize,
}

impl Default for StackText {
    fn default() -> Self {
        StackText {
            bytes: [0; 64],
            len: 0,
        }
    }
}

impl StackText {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

impl fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let dst = self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Where an id sits in its table: Go numbers ids 1..=n in order, which
/// needs no map at all.
enum Ids {
    Dense(usize),
    Map(HashMap<u64, usize>),
}

impl Ids {
    fn of(ids: impl ExactSizeIterator<Item = u64> + Clone) -> Ids {
        let n = ids.len();
        if ids.clone().enumerate().all(|(i, id)| id == i as u64 + 1) {
            return Ids::Dense(n);
        }
        let mut map = HashMap::with_capacity(n);
        for (i, id) in ids.enumerate() {
            // A duplicate id: the last one wins.
            map.insert(id, i);
        }
        Ids::Map(map)
    }

    fn get(&self, id: u64) -> Option<usize> {
        match self {
            Ids::Dense(n) => id
                .checked_sub(1)
                .filter(|&i| i < *n as u64)
                .map(|i| i as usize),
            Ids::Map(m) => m.get(&id).copied(),
        }
    }
}

/// A profile's stacks as interned names.
pub(crate) struct Symbols<'p> {
    locations: Ids,
    /// Per location (by position): its frames, a range of `frames`.
    spans: Vec<(u32, u32)>,
    frames: Vec<u32>,
    names: Vec<Name<'p>>,
    index_of: HashMap<Name<'p>, u32>,
    placeholders: usize,
}

impl<'p> Symbols<'p> {
    /// Resolves every location of `p` once, up front.
    pub(crate) fn new(p: &'p Profile) -> Self {
        let functions = Ids::of(p.function.iter().map(|f| f.id));
        let total: usize = p
            .location
            .iter()
            .fold(0usize, |n, l| n.saturating_add(l.line.len().max(1)));
        let mut s = Symbols {
            locations: Ids::of(p.location.iter().map(|l| l.id)),
            spans: Vec::with_capacity(p.location.len()),
            frames: Vec::with_capacity(total),
            names: Vec::new(),
            index_of: HashMap::new(),
            placeholders: 0,
        };
        for loc in &p.location {
            let start = s.frames.len();
            if loc.line.is_empty() {
                let name = if loc.address != 0 {
                    Name::Address(loc.address)
                } else {
                    Name::LocationWithoutLines(loc.id)
                };
                let i = s.intern(name);
                s.frames.push(i);
            }
            for line in &loc.line {
                let name = match functions.get(line.function_id) {
                    None => Name::MissingFunction(line.function_id),
                    Some(f) => {
                        let f = &p.function[f];
                        match str_at(p, f.name) {
                            None => Name::BadString(f.name),
                            Some("") => Name::UnnamedFunction(f.id),
                            Some(text) => Name::Str(text),
                        }
                    }
                };
                let i = s.intern(name);
                s.frames.push(i);
            }
            s.spans.push((index(start), index(s.frames.len() - start)));
        }
        // Samples may name locations that do not exist.
        for sample in &p.sample {
            for &id in &sample.location_id {
                if s.locations.get(id).is_none() {
                    s.intern(Name::MissingLocation(id));
                }
            }
        }
        s
    }

    fn intern(&mut self, name: Name<'p>) -> u32 {
        if let Some(&i) = self.index_of.get(&name) {
            return i;
        }
        if name.is_placeholder() {
            if self.placeholders >= MAX_PLACEHOLDERS {
                return self.intern(Name::MoreBadReferences);
            }
            self.placeholders += 1;
        }
        let i = index(self.names.len());
        self.names.push(name);
        self.index_of.insert(name, i);
        i
    }

    /// The id of a name interned by [`Symbols::new`].
    fn lookup(&self, name: Name<'p>) -> u32 {
        self.index_of
            .get(&name)
            .or_else(|| self.index_of.get(&Name::MoreBadReferences))
            .copied()
            .unwrap_or(0)
    }

    /// Distinct names; name ids are below this.
    pub(crate) fn name_count(&self) -> usize {
        self.names.len()
    }

    pub(crate) fn name(&self, id: u32) -> Name<'p> {
        self.names
            .get(id as usize)
            .copied()
            .unwrap_or(Name::MoreBadReferences)
    }

    /// The frames of a sample, leaf first (inlined callees before callers),
    /// at most [`MAX_SAMPLE_FRAMES`]: a hostile profile can reference one
    /// location with thousands of lines thousands of times.
    pub(crate) fn frames<'s>(&'s self, s: &'s Sample) -> impl Iterator<Item = u32> + 's {
        s.location_id
            .iter()
            .flat_map(move |&id| {
                let (known, missing) = match self.locations.get(id) {
                    Some(pos) => {
                        let (start, len) = self.spans[pos];
                        let span = start as usize..(start as usize + len as usize);
                        (&self.frames[span], None)
                    }
                    None => (&[][..], Some(self.lookup(Name::MissingLocation(id)))),
                };
                known.iter().copied().chain(missing)
            })
            .take(MAX_SAMPLE_FRAMES)
    }

    /// [`Symbols::frames`] into a buffer the caller reuses.
    pub(crate) fn frames_into(&self, s: &Sample, out: &mut Vec<u32>) {
        out.clear();
        out.extend(self.frames(s));
    }
}

/// A table position as `u32`: the budget keeps tables far below 2^32.
fn index(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------
// Pricing
// ---------------------------------------------------------------------------

/// A `HashMap` holding `n` entries of `entry` bytes, built by inserting one
/// at a time (`grown`: counts the table it left behind when it last grew),
/// or sized up front. Buckets are a power of two at most 7/8 full, plus a
/// control byte each and one 16-byte group.
pub(crate) fn map_bytes(n: u64, entry: u64, grown: bool) -> u64 {
    if n == 0 {
        return 0;
    }
    let buckets = |n: u64| match n {
        0..=3 => 4,
        4..=7 => 8,
        n => (n.saturating_mul(8) / 7)
            .checked_next_power_of_two()
            .unwrap_or(u64::MAX),
    };
    let table = |b: u64| heap_block(b.saturating_mul(entry + 1).saturating_add(32));
    let b = buckets(n);
    table(b) + if grown && b > 4 { table(b / 2) } else { 0 }
}

/// The most distinct names [`Symbols::new`] can intern: one per function
/// name string, one per unsymbolised location, and the placeholders.
pub(crate) fn max_names(e: &Estimate) -> u64 {
    let real = e.count(Repeated::Function).min(e.count(Repeated::String));
    real.saturating_add(e.lineless_locations())
        .saturating_add(MAX_PLACEHOLDERS as u64 + 1)
}

/// What [`Symbols::new`] can allocate for a profile priced as `e`, added
/// to `w` (indexed by the field that causes it).
pub(crate) fn working_set(e: &Estimate, w: &mut [u64; Repeated::ALL.len()]) {
    let locations = e.count(Repeated::Location);
    let functions = e.count(Repeated::Function);
    let entry = size_of::<(u64, usize)>() as u64;
    w[Repeated::Location.index()] += map_bytes(locations, entry, false)
        + heap_block(locations.saturating_mul(size_of::<(u32, u32)>() as u64));
    w[Repeated::Line.index()] += heap_block(
        e.count(Repeated::Line)
            .saturating_add(e.lineless_locations())
            .saturating_mul(4),
    );
    let names = max_names(e);
    let (list, old) = grown_vec(names, size_of::<Name<'static>>() as u64);
    w[Repeated::Function.index()] += map_bytes(functions, entry, false)
        + list
        + old
        + map_bytes(names, size_of::<(Name<'static>, u32)>() as u64, true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pprof::test_profiles::B;
    use crate::pprof::{Function, Line, Location};

    fn texts(sym: &Symbols, s: &Sample) -> Vec<String> {
        sym.frames(s)
            .map(|f| sym.name(f).text().into_owned())
            .collect()
    }

    #[test]
    fn frames_are_leaf_first_with_inlined_callees_before_callers() {
        let mut b = B::new(&[("inuse_space", "bytes")]);
        let (callee, caller, main) = (b.s("inlined"), b.s("caller"), b.s("main.main"));
        for (id, name) in [(10, callee), (11, caller), (12, main)] {
            b.p.function.push(Function {
                id,
                name,
                ..Default::default()
            });
        }
        let line = |function_id| Line {
            function_id,
            ..Default::default()
        };
        b.p.location.push(Location {
            id: 7,
            line: vec![line(10), line(11)],
            ..Default::default()
        });
        b.p.location.push(Location {
            id: 8,
            line: vec![line(12)],
            ..Default::default()
        });
        b.sample(&[7, 8], &[1]);
        let sym = Symbols::new(&b.p);
        assert_eq!(
            texts(&sym, &b.p.sample[0]),
            ["inlined", "caller", "main.main"]
        );
    }

    #[test]
    fn sparse_and_duplicate_ids_resolve_through_a_map() {
        let mut b = B::new(&[("inuse_space", "bytes")]);
        b.func(1000, "main.far")
            .func(3, "main.near")
            .func(3, "main.again");
        b.sample(&[1000, 3], &[1]);
        let sym = Symbols::new(&b.p);
        assert!(matches!(sym.locations, Ids::Map(_)));
        // The last of two locations with id 3 wins, as a map would have it.
        assert_eq!(texts(&sym, &b.p.sample[0]), ["main.far", "main.again"]);
        let mut dense = B::new(&[("inuse_space", "bytes")]);
        dense.func(1, "a").func(2, "b");
        assert!(matches!(Symbols::new(&dense.p).locations, Ids::Dense(2)));
    }

    #[test]
    fn placeholders_past_the_cap_share_one_name() {
        let mut b = B::new(&[("goroutine", "count")]);
        let ids: Vec<u64> = (1..=(MAX_PLACEHOLDERS as u64 + 50))
            .map(|i| i + 5000)
            .collect();
        b.sample(&ids[..MAX_SAMPLE_FRAMES], &[1]);
        b.sample(&ids[MAX_SAMPLE_FRAMES..], &[1]);
        let sym = Symbols::new(&b.p);
        assert_eq!(sym.name_count(), MAX_PLACEHOLDERS + 1);
        let last: Vec<String> = texts(&sym, &b.p.sample[1]);
        assert_eq!(last.last().unwrap(), "<more bad references>");
        assert_eq!(texts(&sym, &b.p.sample[0])[0], "<missing location 5001>");
    }

    #[test]
    fn names_for_people_are_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_NAME_BYTES);
        let cut = for_people(&long);
        assert!(cut.ends_with('…'));
        assert!(cut.len() <= MAX_NAME_BYTES + '…'.len_utf8());
        assert_eq!(for_people("main.f"), "main.f");
        let mut b = B::new(&[]);
        let i = b.s(&long);
        assert_eq!(string_for_people(&b.p, i), cut);
        assert_eq!(string_for_people(&b.p, -3), "<bad string index -3>");
    }

    #[test]
    fn map_bytes_grows_by_powers_of_two() {
        assert_eq!(map_bytes(0, 16, true), 0);
        let one = map_bytes(1, 16, false);
        assert_eq!(one, heap_block(4 * 17 + 32));
        assert!(map_bytes(1000, 16, true) > map_bytes(1000, 16, false));
        assert!(map_bytes(1000, 16, false) >= 1000 * 17);
    }
}
