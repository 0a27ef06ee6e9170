//! Go's float text conversions, as Prometheus 3 uses them to rewrite `le` and `quantile`
//! label values (`normalizeFloatsInLabelValues` in `model/textparse`).
//!
//! * [`parse`] is Go's `strconv.ParseFloat(s, 64)` with its current syntax: decimal floats,
//!   hexadecimal floats (`0x1p-2`, a `p` exponent required), `_` between two digits (or after
//!   the `0x` prefix; Prometheus 3.5 stores `le="1_0"` as `10.0`), `inf`/`infinity` with an
//!   optional sign and `nan` without one (any case). A finite literal that overflows is an
//!   error (`ErrRange`), as is anything else.
//! * [`format_openmetrics_float`] is `labels.FormatOpenMetricsFloat`: `1.0`, `0.0`, `-1.0`,
//!   `NaN`, `+Inf`, `-Inf` for those values, otherwise Go's shortest `'g'` form
//!   (`strconv.AppendFloat(f, 'g', -1, 64)`: the exponent form when the decimal exponent is
//!   below −4 or at least 6, with a sign and at least two exponent digits, `1e+06`, `1e-05`)
//!   with `.0` appended when the result has neither `.` nor `e`.
//! * [`normalize`] combines them: the normalised text of a value Go parses, `None` otherwise
//!   (the value is then kept as it is).
//!
//! No function here panics, whatever the input.

/// Go's `strconv.ParseFloat(s, 64)`; `None` where Go returns an error.
pub fn parse(s: &str) -> Option<f64> {
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, s.get(1..)?),
        Some(b'+') => (false, s.get(1..)?),
        _ => (false, s),
    };
    let lower = body.to_ascii_lowercase();
    if lower == "inf" || lower == "infinity" {
        return Some(if negative {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        });
    }
    if lower == "nan" {
        // Go's `special` accepts "nan" only without a sign.
        return (body.len() == s.len()).then_some(f64::NAN);
    }
    let magnitude = if lower.starts_with("0x") {
        parse_hex(lower.get(2..)?)?
    } else {
        if !underscores_ok(body, false) {
            return None;
        }
        parse_decimal(&body.replace('_', ""))?
    };
    Some(if negative { -magnitude } else { magnitude })
}

/// `digits [. digits] | . digits`, then optionally `[eE] [+-] digits`; overflow is an error.
fn parse_decimal(s: &str) -> Option<f64> {
    if !is_decimal_float(s) {
        return None;
    }
    let v: f64 = s.parse().ok()?;
    v.is_finite().then_some(v)
}

/// Whether `s` is `digits [. digits] | . digits` (at least one mantissa digit), then optionally
/// `[eE] [+-] digits`: a decimal float in Go's syntax before Go 1.13, without sign.
pub fn is_decimal_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let mut mantissa_digits = 0;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
        mantissa_digits += 1;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
            mantissa_digits += 1;
        }
    }
    if mantissa_digits == 0 {
        return false;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == exp_start {
            return false;
        }
    }
    i == b.len()
}

/// The part of a hexadecimal float after `0x` (lowercased): hex digits with an optional `.`,
/// then a mandatory `p` exponent; `_` only between digits (or right after the prefix).
fn parse_hex(s: &str) -> Option<f64> {
    if !underscores_ok(s, true) {
        return None;
    }
    let (mantissa, exponent) = s.split_once('p')?;
    let mut value: u128 = 0;
    let mut scale: i64 = 0;
    let mut digits = 0;
    let mut seen_point = false;
    for c in mantissa.chars() {
        match c {
            '_' => {}
            '.' if !seen_point => seen_point = true,
            _ => {
                let d = c.to_digit(16)?;
                digits += 1;
                if value >> 120 == 0 {
                    value = (value << 4) | u128::from(d);
                    if seen_point {
                        scale -= 4;
                    }
                } else if !seen_point {
                    // Digits past the precision kept still scale the value.
                    scale += 4;
                }
            }
        }
    }
    if digits == 0 {
        return None;
    }
    let (exp_negative, exp_digits) = match exponent.as_bytes().first() {
        Some(b'-') => (true, exponent.get(1..)?),
        Some(b'+') => (false, exponent.get(1..)?),
        _ => (false, exponent),
    };
    if exp_digits.is_empty() || !exp_digits.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        return None;
    }
    let exp: i64 = exp_digits
        .chars()
        .filter(|c| *c != '_')
        .collect::<String>()
        .parse::<i64>()
        .unwrap_or(i64::MAX / 4)
        .min(100_000);
    let exp = if exp_negative { -exp } else { exp };
    let v = scale_by_power_of_two(value as f64, exp.saturating_add(scale));
    v.is_finite().then_some(v)
}

/// Go's `underscoreOK` on what follows the sign (and, for `hex`, the `0x` prefix, which counts
/// as a digit): an underscore only right after a digit and right before one.
fn underscores_ok(s: &str, hex: bool) -> bool {
    #[derive(PartialEq)]
    enum Saw {
        Start,
        Digit,
        Underscore,
        Other,
    }
    let mut saw = if hex { Saw::Digit } else { Saw::Start };
    for c in s.chars() {
        let digit = c.is_ascii_digit() || (hex && c.is_ascii_hexdigit());
        if digit {
            saw = Saw::Digit;
        } else if c == '_' {
            if saw != Saw::Digit {
                return false;
            }
            saw = Saw::Underscore;
        } else if saw == Saw::Underscore {
            return false;
        } else {
            saw = Saw::Other;
        }
    }
    saw != Saw::Underscore
}

/// `v × 2^exp`, in steps that stay exact while the result is a normal number.
fn scale_by_power_of_two(mut v: f64, mut exp: i64) -> f64 {
    while exp > 0 && v.is_finite() && v != 0.0 {
        let step = exp.min(1000);
        v *= 2f64.powi(step as i32);
        exp -= step;
    }
    while exp < 0 && v != 0.0 {
        let step = (-exp).min(1000);
        v /= 2f64.powi(step as i32);
        exp += step;
    }
    v
}

/// Prometheus's `labels.FormatOpenMetricsFloat` (see the module docs).
pub fn format_openmetrics_float(f: f64) -> String {
    if f == 1.0 {
        return "1.0".into();
    }
    if f == 0.0 {
        return "0.0".into();
    }
    if f == -1.0 {
        return "-1.0".into();
    }
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let s = format_g(f);
    if s.contains(['.', 'e']) { s } else { s + ".0" }
}

/// Go's `strconv.FormatFloat(f, 'g', -1, 64)` for a finite, non-zero `f`.
fn format_g(f: f64) -> String {
    // Rust's `{:e}` gives the shortest round-trip digits, as Go's shortest mode does.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if f < 0.0 { "-" } else { "" };
    // Go: %e when the exponent is below -4 or at least the precision, 6 in shortest mode.
    if !(-4..6).contains(&exp) {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        let point = if rest.is_empty() { "" } else { "." };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        return format!(
            "{sign}{first}{point}{rest}e{exp_sign}{:02}",
            exp.unsigned_abs()
        );
    }
    // %f with just the digits needed: the point sits after `exp + 1` digits.
    let point = exp + 1;
    let s = if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else {
        let point = point as usize;
        if digits.len() <= point {
            format!("{digits}{}", "0".repeat(point - digits.len()))
        } else {
            let (int, frac) = digits.split_at(point);
            format!("{int}.{frac}")
        }
    };
    format!("{sign}{s}")
}

/// The value Prometheus 3 stores for an `le` or `quantile` label it normalises: the
/// [`format_openmetrics_float`] text of what [`parse`] reads, or `None` (kept unchanged) when
/// Go cannot parse it.
pub fn normalize(value: &str) -> Option<String> {
    parse(value).map(format_openmetrics_float)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_as_prometheus_3() {
        // The rows of Prometheus 3's normalisation (reference notes §2.4).
        for (exposed, stored) in [
            ("1", "1.0"),
            ("0.5", "0.5"),
            ("+Inf", "+Inf"),
            ("inf", "+Inf"),
            ("Inf", "+Inf"),
            ("+infinity", "+Inf"),
            ("-Inf", "-Inf"),
            ("10", "10.0"),
            ("0.10", "0.1"),
            ("1e3", "1000.0"),
            ("100000", "100000.0"),
            ("1000000", "1e+06"),
            ("1234567", "1.234567e+06"),
            ("0.0001", "0.0001"),
            ("0.00001", "1e-05"),
            ("0", "0.0"),
            ("-0", "0.0"),
            ("0.99", "0.99"),
            ("-1", "-1.0"),
            ("0x1p-2", "0.25"),
            ("0X1.8P1", "3.0"),
            ("0x1_0p0", "16.0"),
            ("1_0", "10.0"),
            ("1_000.5e1_0", "1.0005e+13"),
            ("nan", "NaN"),
            ("NaN", "NaN"),
            ("2.5e-7", "2.5e-07"),
            ("1.5e300", "1.5e+300"),
            ("123456789", "1.23456789e+08"),
            ("999999", "999999.0"),
            ("-0.000012", "-1.2e-05"),
            (".5", "0.5"),
            ("5.", "5.0"),
        ] {
            assert_eq!(normalize(exposed).as_deref(), Some(stored), "{exposed}");
        }
        for kept in [
            "abc", "", "+nan", "1e400", "0x10", "0x", "1e", "--1", "0x_1p0_", "1 ", " 1", "0x1p",
            "infx", "_1", "1_", "1__0", "1_.5", "1._5", "1e_1",
        ] {
            assert_eq!(normalize(kept), None, "{kept:?}");
        }
    }

    #[test]
    fn never_panics() {
        for s in [
            "0x.p1",
            "0x.8p-1",
            "0xffffffffffffffffffffffffffffffffffp0",
            "0x1p-99999",
        ] {
            let _ = normalize(s);
        }
        assert_eq!(normalize("0x.8p1").as_deref(), Some("1.0"));
        assert_eq!(normalize("0x1p-1074").as_deref(), Some("5e-324"));
    }
}
