//! Unit tests of the summaries, on profiles built by hand.

use super::*;
use crate::pprof::test_profiles::{heap_profile, B, HEAP};
use crate::pprof::{Function, Line, Location};

fn find<'a>(rows: &'a [FunctionBytes], name: &str) -> &'a FunctionBytes {
    rows.iter().find(|r| r.function == name).unwrap()
}

#[test]
fn heap_summary_flat_and_cum() {
    let s = heap_summary(&heap_profile(), 10).unwrap();
    assert_eq!(s.sample_type, "inuse_space/bytes");
    assert!(!s.sample_type_fallback);
    assert_eq!(s.total_bytes, 1000);
    assert_eq!(s.sample_count, 3);
    assert_eq!(s.function_count, 4);
    // main.other has no in-use bytes: not listed.
    assert_eq!(s.top_flat.len(), 2);
    assert_eq!(s.top_flat[0].function, "main.leaf");
    assert_eq!(s.top_flat[0].flat_bytes, 700);
    assert_eq!(s.top_flat[0].flat_percent, 70.0);
    assert_eq!(s.top_flat[1].function, "main.grow");
    assert_eq!(s.top_flat[1].flat_bytes, 300);
    assert_eq!(s.top_flat[1].cum_bytes, 1000);
    assert_eq!(s.top_cum[0].cum_bytes, 1000);
    assert_eq!(find(&s.top_cum, "main.main").cum_bytes, 1000);
    assert_eq!(find(&s.top_cum, "main.main").flat_bytes, 0);
    assert_eq!(find(&s.top_cum, "main.leaf").cum_bytes, 700);
    // top_n truncates
    let s1 = heap_summary(&heap_profile(), 1).unwrap();
    assert_eq!(s1.top_flat.len(), 1);
    assert_eq!(s1.top_cum.len(), 1);
}

#[test]
fn recursion_counts_cum_once_per_sample() {
    let mut b = B::new(&[("inuse_space", "bytes")]);
    b.func(1, "main.rec").func(2, "main.main");
    b.sample(&[1, 1, 1, 2], &[100]);
    let s = heap_summary(&b.p, 5).unwrap();
    let rec = find(&s.top_cum, "main.rec");
    assert_eq!(rec.cum_bytes, 100);
    assert_eq!(rec.flat_bytes, 100);
    assert_eq!(rec.cum_percent, 100.0);
}

#[test]
fn inlined_leaf_is_the_first_line() {
    let mut b = B::new(&[("inuse_space", "bytes")]);
    let callee = b.s("main.inlinedAlloc");
    let caller = b.s("main.caller");
    b.p.function.push(Function {
        id: 10,
        name: callee,
        ..Default::default()
    });
    b.p.function.push(Function {
        id: 11,
        name: caller,
        ..Default::default()
    });
    b.p.location.push(Location {
        id: 5,
        line: vec![
            Line {
                function_id: 10,
                line: 3,
                column: 0,
            },
            Line {
                function_id: 11,
                line: 9,
                column: 0,
            },
        ],
        ..Default::default()
    });
    b.sample(&[5], &[64]);
    let s = heap_summary(&b.p, 5).unwrap();
    assert_eq!(s.top_flat.len(), 1);
    assert_eq!(s.top_flat[0].function, "main.inlinedAlloc");
    assert_eq!(find(&s.top_cum, "main.caller").cum_bytes, 64);
    assert_eq!(find(&s.top_cum, "main.caller").flat_bytes, 0);
}

#[test]
fn same_name_different_ids_is_one_function() {
    let mut b = B::new(&[("inuse_space", "bytes")]);
    b.func(1, "main.f").func(2, "main.f");
    b.sample(&[1], &[10]).sample(&[2], &[20]);
    let s = heap_summary(&b.p, 5).unwrap();
    assert_eq!(s.function_count, 1);
    assert_eq!(s.top_flat[0].flat_bytes, 30);
}

#[test]
fn malformed_indexes_do_not_panic() {
    let mut b = B::new(&[("inuse_space", "bytes")]);
    // Function name out of the string table, negative string index.
    b.p.function.push(Function {
        id: 1,
        name: 999,
        ..Default::default()
    });
    b.p.function.push(Function {
        id: 2,
        name: -5,
        ..Default::default()
    });
    b.p.location.push(Location {
        id: 1,
        line: vec![Line {
            function_id: 1,
            ..Default::default()
        }],
        ..Default::default()
    });
    b.p.location.push(Location {
        id: 2,
        line: vec![Line {
            function_id: 2,
            ..Default::default()
        }],
        ..Default::default()
    });
    // A line pointing to a function that does not exist.
    b.p.location.push(Location {
        id: 3,
        line: vec![Line {
            function_id: 77,
            ..Default::default()
        }],
        ..Default::default()
    });
    // A location without lines, with and without an address.
    b.p.location.push(Location {
        id: 4,
        address: 0x4010,
        ..Default::default()
    });
    b.p.location.push(Location {
        id: 5,
        ..Default::default()
    });
    b.sample(&[1], &[1])
        .sample(&[2], &[2])
        .sample(&[3], &[4])
        .sample(&[4], &[8])
        .sample(&[5], &[16])
        .sample(&[42, 1], &[32]) // missing location 42
        .sample(&[], &[64]) // no stack
        .sample(&[1], &[]) // too few values
        .sample(&[1], &[-1000]); // negative: counts as 0
    let s = heap_summary(&b.p, 20).unwrap();
    assert_eq!(s.total_bytes, 127);
    let names: Vec<&str> = s.top_flat.iter().map(|r| r.function.as_str()).collect();
    for want in [
        "<bad string index 999>",
        "<bad string index -5>",
        "<missing function 77>",
        "0x4010",
        "<location 5 without lines>",
        "<missing location 42>",
        "<no stack>",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
    let flat_sum: u64 = s.top_flat.iter().map(|r| r.flat_bytes).sum();
    assert_eq!(flat_sum, s.total_bytes);

    let g = goroutine_summary(&b.p, 3);
    assert_eq!(g.total_goroutines, 127);
    assert_eq!(g.top_stacks.len(), 3);
}

#[test]
fn sample_type_with_bad_string_index() {
    let mut p = Profile {
        string_table: vec![String::new()],
        ..Default::default()
    };
    p.sample_type.push(ValueType {
        r#type: 12345,
        unit: -1,
    });
    p.sample.push(Sample {
        location_id: vec![1],
        value: vec![5],
        label: vec![],
    });
    let err = heap_summary(&p, 5).unwrap_err();
    assert!(
        err.to_string().contains("<bad string index 12345>"),
        "{err}"
    );
    let g = goroutine_summary(&p, 5);
    assert_eq!(g.total_goroutines, 5);
    assert_eq!(g.top_stacks[0].functions, vec!["<missing location 1>"]);
}

#[test]
fn empty_profile() {
    let p = Profile::default();
    let err = heap_summary(&p, 5).unwrap_err();
    assert!(matches!(err, PprofError::NoBytesSampleType { .. }));
    assert!(err.to_string().contains("no sample types at all"), "{err}");
    let g = goroutine_summary(&p, 5);
    assert_eq!(g.total_goroutines, 0);
    assert_eq!(g.distinct_stacks, 0);
    assert!(g.top_stacks.is_empty());

    // Sample types but no samples.
    let b = B::new(HEAP);
    let s = heap_summary(&b.p, 5).unwrap();
    assert_eq!(s.total_bytes, 0);
    assert!(s.top_flat.is_empty() && s.top_cum.is_empty());
    assert_eq!(verdict(&s, None), "heap 0B in use, no samples");
}

#[test]
fn fallback_when_no_inuse_space() {
    // A legacy-style heap profile.
    let mut b = B::new(&[("objects", "count"), ("space", "bytes")]);
    b.func(1, "main.f").sample(&[1], &[1, 4096]);
    let s = heap_summary(&b.p, 5).unwrap();
    assert_eq!(s.sample_type, "space/bytes");
    assert!(s.sample_type_fallback);
    assert_eq!(s.total_bytes, 4096);

    // The default sample type wins among several in bytes.
    let mut b = B::new(&[("a", "bytes"), ("b", "bytes")]);
    b.p.default_sample_type = b.s("a");
    b.func(1, "main.f").sample(&[1], &[1, 2]);
    let s = heap_summary(&b.p, 5).unwrap();
    assert_eq!(s.sample_type, "a/bytes");
    assert_eq!(s.total_bytes, 1);

    // Nothing in bytes: an error naming what there is.
    let mut b = B::new(&[("goroutine", "count")]);
    b.func(1, "main.f").sample(&[1], &[3]);
    let err = heap_summary(&b.p, 5).unwrap_err();
    assert!(err.to_string().contains("goroutine/count"), "{err}");
}

#[test]
fn goroutine_stacks() {
    let mut b = B::new(&[("goroutine", "count")]);
    b.func(1, "runtime.gopark")
        .func(2, "main.parked")
        .func(3, "main.main")
        .func(4, "main.busy")
        .sample(&[1, 2], &[700])
        .sample(&[1, 2], &[300]) // same stack again: merged
        .sample(&[4, 3], &[1])
        .sample(&[], &[1]);
    let g = goroutine_summary(&b.p, 3);
    assert!(g
        .top_stacks
        .iter()
        .any(|s| s.functions == ["<no stack>"] && s.goroutines == 1));
    let g = goroutine_summary(&b.p, 1);
    assert_eq!(g.total_goroutines, 1002);
    assert_eq!(g.distinct_stacks, 3);
    assert_eq!(g.top_stacks.len(), 1);
    assert_eq!(g.top_stacks[0].goroutines, 1000);
    assert_eq!(
        g.top_stacks[0].functions,
        vec!["runtime.gopark", "main.parked"]
    );
    assert_eq!(g.top_stacks[0].omitted_frames, 0);
}

#[test]
fn deep_goroutine_stacks_are_cut() {
    let mut b = B::new(&[("goroutine", "count")]);
    b.func(1, "main.rec");
    b.sample(&[1; MAX_STACK_FRAMES + 10], &[1]);
    let g = goroutine_summary(&b.p, 1);
    assert_eq!(g.top_stacks[0].functions.len(), MAX_STACK_FRAMES);
    assert_eq!(g.top_stacks[0].omitted_frames, 10);
}

#[test]
fn diff_by_name_across_ids() {
    let mut base = B::new(HEAP);
    base.func(1, "main.main")
        .func(2, "main.grow")
        .func(3, "main.shrink")
        .func(4, "main.same")
        .sample(&[2, 1], &[0, 0, 0, 100])
        .sample(&[3, 1], &[0, 0, 0, 500])
        .sample(&[4, 1], &[0, 0, 0, 50]);
    // Same functions, other ids, plus a new one.
    let mut cur = B::new(HEAP);
    cur.func(11, "main.same")
        .func(12, "main.new")
        .func(13, "main.grow")
        .func(14, "main.main")
        .func(15, "main.shrink")
        .sample(&[13, 14], &[0, 0, 0, 1100])
        .sample(&[15, 14], &[0, 0, 0, 200])
        .sample(&[11, 14], &[0, 0, 0, 50])
        .sample(&[12, 14], &[0, 0, 0, 300]);
    let d = heap_diff(&base.p, &cur.p, 10).unwrap();
    assert_eq!(d.sample_type, "inuse_space/bytes");
    assert_eq!(d.base_total_bytes, 650);
    assert_eq!(d.current_total_bytes, 1650);
    assert_eq!(d.total_delta_bytes, 1000);
    assert_eq!(d.growth_bytes, 1300);
    let names: Vec<&str> = d.top_growth.iter().map(|g| g.function.as_str()).collect();
    assert_eq!(names, vec!["main.grow", "main.new"]);
    assert_eq!(d.top_growth[0].base_bytes, 100);
    assert_eq!(d.top_growth[0].current_bytes, 1100);
    assert_eq!(d.top_growth[0].delta_bytes, 1000);
    assert_eq!(d.top_growth[1].base_bytes, 0);
    assert_eq!(d.top_growth[1].delta_bytes, 300);

    let d1 = heap_diff(&base.p, &cur.p, 1).unwrap();
    assert_eq!(d1.top_growth.len(), 1);

    // Reversed: the heap shrank overall, but main.shrink grew.
    let r = heap_diff(&cur.p, &base.p, 10).unwrap();
    assert_eq!(r.total_delta_bytes, -1000);
    assert_eq!(r.top_growth[0].function, "main.shrink");
    assert_eq!(r.top_growth[0].delta_bytes, 300);
}

#[test]
fn diff_refuses_mismatched_sample_types() {
    let mut a = B::new(HEAP);
    a.func(1, "f").sample(&[1], &[1, 1, 1, 1]);
    let mut b = B::new(&[("space", "bytes")]);
    b.func(1, "f").sample(&[1], &[1]);
    let err = heap_diff(&a.p, &b.p, 5).unwrap_err();
    assert!(
        matches!(err, PprofError::SampleTypeMismatch { .. }),
        "{err}"
    );
    assert!(heap_diff(&Profile::default(), &a.p, 5).is_err());
}

#[test]
fn verdicts() {
    const MIB: i64 = 1024 * 1024;
    let mut base = B::new(&[("inuse_space", "bytes")]);
    base.func(1, "main.warm")
        .func(2, "main.(*cache).put")
        .sample(&[1], &[48 * MIB]);
    let mut cur = B::new(&[("inuse_space", "bytes")]);
    cur.func(1, "main.warm")
        .func(2, "main.(*cache).put")
        .func(3, "main.other")
        .sample(&[1], &[48 * MIB])
        .sample(&[2], &[129 * MIB])
        .sample(&[3], &[53 * MIB]);
    let s = heap_summary(&cur.p, 5).unwrap();
    assert_eq!(
        verdict(&s, None),
        "heap 230MiB in use, 56% in main.(*cache).put"
    );
    let d = heap_diff(&base.p, &cur.p, 5).unwrap();
    assert_eq!(
        verdict(&s, Some(&d)),
        "heap +182MiB since baseline, 71% in main.(*cache).put (230MiB in use)"
    );
    // Nothing grew.
    let d = heap_diff(&cur.p, &base.p, 5).unwrap();
    let s = heap_summary(&base.p, 5).unwrap();
    assert_eq!(
        verdict(&s, Some(&d)),
        "heap -182MiB since baseline, no function grew (48MiB in use)"
    );
}

#[test]
fn human_bytes_units() {
    assert_eq!(human_bytes(0), "0B");
    assert_eq!(human_bytes(512), "512B");
    assert_eq!(human_bytes(1023), "1023B");
    assert_eq!(human_bytes(1024), "1KiB");
    assert_eq!(human_bytes(1536), "1.5KiB");
    assert_eq!(human_bytes(182 * 1024 * 1024), "182MiB");
    assert_eq!(human_bytes(3 * 1024 * 1024 / 2 * 1024), "1.5GiB");
    assert_eq!(human_bytes(1024 * 1024 - 1), "1MiB");
    assert_eq!(human_bytes(u64::MAX), "16EiB");
    assert_eq!(human_bytes_signed(0), "0B");
    assert_eq!(human_bytes_signed(182 * 1024 * 1024), "+182MiB");
    assert_eq!(human_bytes_signed(-5 * 1024 * 1024), "-5MiB");
    assert_eq!(human_bytes_signed(i64::MIN), "-8EiB");
}
