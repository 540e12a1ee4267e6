//! Kubernetes resource quantities (`10m`, `16Mi`, `1e9`, `1.5Gi`), the
//! grammar the API server accepts for `resources`, parsed once into an exact
//! value.
//!
//! A string enters; a [`Quantity`] (an exact fraction) or a sentence saying
//! what is wrong leaves. One parser decides both the form and the value, so
//! a check such as "request ≤ limit" can never be skipped because a second
//! parser disagreed about the form (`1e9` once passed the form check and
//! failed the size parser). The sidecar's own sizes (`OOMSNAP_*`) are not
//! Kubernetes quantities (`MiB` is fine there, refused here) and keep
//! `config::parse_size`.

/// A non-negative quantity as the exact fraction `num / den`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    num: u128,
    den: u128,
}

/// Longest number part accepted: more digits than any real quantity, few
/// enough that the arithmetic below cannot overflow silently.
const MAX_DIGITS: usize = 30;
/// Largest decimal exponent accepted (`1e18` is already an exabyte).
const MAX_EXPONENT: i32 = 30;

impl Quantity {
    /// Whole units, rounded up: what the kubelet writes for a
    /// `resourceFieldRef` with the default divisor of 1 (a memory limit in
    /// bytes as a plain integer).
    pub fn ceil(&self) -> u128 {
        self.num.div_ceil(self.den)
    }

    /// Whether the quantity is zero (`0`, `0Mi`, `0.0`).
    pub fn is_zero(&self) -> bool {
        self.num == 0
    }
}

fn pow(base: u128, exp: u32) -> Option<u128> {
    base.checked_pow(exp)
}

/// Parses a quantity: `<number><suffix>`, where the number is digits with
/// at most one `.`, and the suffix is empty, binary (`Ki` … `Ei`), decimal
/// (`m`, `k`, `M`, `G`, `T`, `P`, `E`) or an exponent (`e3`, `E-2`). A sign
/// is refused: no resource the injector reads or writes may be negative.
pub fn parse(v: &str) -> Result<Quantity, String> {
    let v = v.trim();
    if v.starts_with(['+', '-']) {
        return Err("it must not carry a sign".into());
    }
    let end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, suffix) = v.split_at(end);
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() {
        return Err("it has no number".into());
    }
    if frac.contains('.') {
        return Err("it has more than one '.'".into());
    }
    let digits = format!("{whole}{frac}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > MAX_DIGITS {
        return Err("it has too many digits".into());
    }
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| "it is not a number")?
    };
    // value = mantissa / 10^frac.len() × scale
    let (binary_shift, decimal_exp): (u32, i32) = match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        s if s.starts_with(['e', 'E']) => {
            let exp = &s[1..];
            let unsigned = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if unsigned.is_empty() || !unsigned.chars().all(|c| c.is_ascii_digit()) {
                return Err(format!("unknown suffix {s:?}"));
            }
            match exp.parse::<i32>() {
                Ok(e) if e.abs() <= MAX_EXPONENT => (0, e),
                _ => return Err("its exponent is out of range".into()),
            }
        }
        s => {
            return Err(format!(
            "unknown suffix {s:?} (Kubernetes writes Ki, Mi, Gi, … or k, M, G, …; not KiB or MB)"
        ))
        }
    };
    let too_large = || "it is too large".to_string();
    let exp = decimal_exp - frac.len() as i32;
    let mut num = mantissa
        .checked_mul(pow(2, binary_shift).ok_or_else(too_large)?)
        .ok_or_else(too_large)?;
    let mut den = 1u128;
    if exp >= 0 {
        num = num
            .checked_mul(pow(10, exp as u32).ok_or_else(too_large)?)
            .ok_or_else(too_large)?;
    } else {
        den = pow(10, exp.unsigned_abs()).ok_or_else(too_large)?;
    }
    Ok(Quantity { num, den })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(v: &str) -> u128 {
        parse(v).unwrap_or_else(|e| panic!("{v}: {e}")).ceil()
    }

    #[test]
    fn every_kubernetes_form_has_an_exact_value() {
        assert_eq!(bytes("512Mi"), 512 << 20);
        assert_eq!(bytes("1.5Gi"), 3 << 29);
        assert_eq!(bytes("1e9"), 1_000_000_000);
        assert_eq!(bytes("1E9"), 1_000_000_000);
        assert_eq!(bytes("1G"), 1_000_000_000);
        assert_eq!(bytes("1E"), 1_000_000_000_000_000_000);
        assert_eq!(bytes("2Ei"), 2 << 60);
        assert_eq!(bytes("128974848"), 128974848);
        assert_eq!(bytes("129e6"), 129_000_000);
        assert_eq!(bytes("123Mi"), 123 << 20);
        assert_eq!(bytes(".5Ki"), 512);
        assert_eq!(bytes("5."), 5);
        assert_eq!(bytes("1e-3"), 1, "fractions round up, as the kubelet does");
        assert_eq!(bytes("0.5"), 1);
        assert_eq!(bytes("500m"), 1);
        assert!(parse("0").unwrap().is_zero());
        assert!(parse("0Mi").unwrap().is_zero());
        assert!(!parse("10m").unwrap().is_zero());
    }

    #[test]
    fn forms_kubernetes_refuses_are_refused_with_a_reason() {
        for (bad, why) in [
            ("", "no number"),
            ("Mi", "no number"),
            ("16MiB", "unknown suffix \"MiB\""),
            ("1GB", "unknown suffix"),
            ("1..2", "more than one"),
            ("ten", "no number"),
            ("1e", "unknown suffix"),
            ("1e+", "unknown suffix"),
            (".", "no number"),
            ("-1Gi", "sign"),
            ("1e99", "exponent"),
            ("99999999999999999999999999999999Ei", "digits"),
            ("9999999999999999999999999999Ei", "too large"),
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
