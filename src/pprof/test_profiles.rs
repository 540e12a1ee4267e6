//! Profiles built by hand for the unit tests: strings are interned into the
//! string table, and `func` adds a function with a location of the same id.

use super::{Function, Line, Location, Profile, Sample, ValueType};

/// A tiny profile builder.
pub(crate) struct B {
    pub(crate) p: Profile,
}

impl B {
    pub(crate) fn new(types: &[(&str, &str)]) -> Self {
        let mut b = B {
            p: Profile {
                string_table: vec![String::new()],
                ..Default::default()
            },
        };
        for (t, u) in types {
            let vt = ValueType {
                r#type: b.s(t),
                unit: b.s(u),
            };
            b.p.sample_type.push(vt);
        }
        b
    }

    /// The index of `s` in the string table, added if new.
    pub(crate) fn s(&mut self, s: &str) -> i64 {
        if let Some(i) = self.p.string_table.iter().position(|x| x == s) {
            return i as i64;
        }
        self.p.string_table.push(s.to_string());
        (self.p.string_table.len() - 1) as i64
    }

    /// Adds a function and a location with one line of it; both get `id`.
    pub(crate) fn func(&mut self, id: u64, name: &str) -> &mut Self {
        let name = self.s(name);
        self.p.function.push(Function {
            id,
            name,
            ..Default::default()
        });
        self.p.location.push(Location {
            id,
            line: vec![Line {
                function_id: id,
                ..Default::default()
            }],
            ..Default::default()
        });
        self
    }

    pub(crate) fn sample(&mut self, locs: &[u64], values: &[i64]) -> &mut Self {
        self.p.sample.push(Sample {
            location_id: locs.to_vec(),
            value: values.to_vec(),
            label: vec![],
        });
        self
    }
}

pub(crate) const HEAP: &[(&str, &str)] = &[
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
];

/// main.main → main.grow → main.leaf (700) ; main.main → main.grow (300)
/// main.main → main.other (0 in use, 5000 allocated)
pub(crate) fn heap_profile() -> Profile {
    let mut b = B::new(HEAP);
    b.func(1, "main.main")
        .func(2, "main.grow")
        .func(3, "main.leaf")
        .func(4, "main.other")
        .sample(&[3, 2, 1], &[7, 7000, 1, 700])
        .sample(&[2, 1], &[3, 3000, 1, 300])
        .sample(&[4, 1], &[5, 5000, 0, 0]);
    b.p
}
