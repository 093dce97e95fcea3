//! Django REST framework's `DecimalField` for the usage amounts: what it
//! accepts, the messages it refuses with, and the exact value it keeps.
//!
//! INVARIANT: amounts are kept as integer hundredths (`DecimalField(max_digits=20,
//! decimal_places=2)` quantizes to two places); no floating-point value is ever
//! stored. A JSON number that is not an integer is first written the way
//! Python's `repr(float)` writes it, because DRF's JSON parser hands floats to
//! the field and the field reads `str(value)`.
//! INVARIANT: the checks run in DRF's order and stop at the first failure:
//! string length, syntax (`decimal.Decimal`), NaN and infinities, total digits,
//! decimal places, whole digits. There is no minimum: negative amounts pass.

use std::fmt;

use serde_json::Value;

/// An amount with exactly two decimal places.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Amount {
    hundredths: i128,
}

impl Amount {
    pub(crate) const ZERO: Amount = Amount { hundredths: 0 };
}

/// `str()` of the quantized `Decimal`: `12.50`, `-0.05`, `100.00`.
impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.hundredths < 0 { "-" } else { "" };
        let abs = self.hundredths.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

/// The limits of one `DecimalField`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DecimalRules {
    pub max_digits: u32,
    pub decimal_places: u32,
}

/// The usage fields of Waldur: `DecimalField(max_digits=20, decimal_places=2)`.
pub(crate) const USAGE: DecimalRules = DecimalRules {
    max_digits: 20,
    decimal_places: 2,
};

/// DRF's `DecimalField.MAX_STRING_LENGTH`.
const MAX_STRING_LENGTH: usize = 1000;

/// A finite `decimal.Decimal` as `as_tuple()` describes it (sign aside):
/// the coefficient's digits without leading zeros (`"0"` for zero) and the exponent.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    negative: bool,
    digits: String,
    exponent: i128,
}

/// What `decimal.Decimal(text)` makes of `text`: `Ok(None)` for NaN and the
/// infinities, `Err(())` for a syntax error. Underscores are dropped as CPython
/// does; surrounding whitespace is ignored.
fn parse_python_decimal(text: &str) -> Result<Option<Parsed>, ()> {
    let cleaned: String = text.trim().chars().filter(|c| *c != '_').collect();
    let (negative, rest) = match cleaned.as_bytes().first() {
        Some(b'-') => (true, &cleaned[1..]),
        Some(b'+') => (false, &cleaned[1..]),
        _ => (false, cleaned.as_str()),
    };
    let lower = rest.to_ascii_lowercase();
    if lower == "inf" || lower == "infinity" {
        return Ok(None);
    }
    for nan in ["nan", "snan"] {
        if let Some(payload) = lower.strip_prefix(nan)
            && payload.bytes().all(|b| b.is_ascii_digit())
        {
            return Ok(None);
        }
    }
    let (mantissa, exponent_text) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (mantissa, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !all_digits(whole) || !all_digits(fraction) {
        return Err(());
    }
    let mut exponent: i128 = 0;
    if let Some(text) = exponent_text {
        let (sign, digits) = match text.as_bytes().first() {
            Some(b'-') => (-1, &text[1..]),
            Some(b'+') => (1, &text[1..]),
            _ => (1, text),
        };
        if digits.is_empty() || !all_digits(digits) {
            return Err(());
        }
        // Saturates: an exponent this large fails every precision check anyway.
        for b in digits.bytes() {
            exponent = exponent
                .saturating_mul(10)
                .saturating_add(i128::from(b - b'0'));
        }
        exponent *= sign;
    }
    let fraction_len = i128::try_from(fraction.len()).unwrap_or(i128::MAX);
    let coefficient = format!("{whole}{fraction}");
    let trimmed = coefficient.trim_start_matches('0');
    Ok(Some(Parsed {
        negative,
        digits: if trimmed.is_empty() {
            "0".to_string()
        } else {
            trimmed.to_string()
        },
        exponent: exponent.saturating_sub(fraction_len),
    }))
}

/// Python's `repr()` of a finite float (`12.5`, `100.0`, `1e+16`, `1.5e-05`).
fn python_float_repr(value: f64) -> String {
    if value == 0.0 {
        return if value.is_sign_negative() {
            "-0.0"
        } else {
            "0.0"
        }
        .to_string();
    }
    let sign = if value < 0.0 { "-" } else { "" };
    // Rust's `{:e}` writes the shortest digits that round-trip, as Python does.
    let scientific = format!("{:e}", value.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..16).contains(&exponent) {
        let point = exponent + 1;
        if point <= 0 {
            let zeros = "0".repeat(usize::try_from(-point).unwrap_or(0));
            format!("{sign}0.{zeros}{digits}")
        } else {
            let point = usize::try_from(point).unwrap_or(0);
            if digits.len() <= point {
                let zeros = "0".repeat(point - digits.len());
                format!("{sign}{digits}{zeros}.0")
            } else {
                format!("{sign}{}.{}", &digits[..point], &digits[point..])
            }
        }
    } else {
        let mantissa = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exponent.unsigned_abs())
    }
}

/// `smart_str(value)` as the field sees it; `None` for values whose text is
/// never a number (lists, objects, booleans).
fn field_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (None, Some(u), _) => u.to_string(),
            (None, None, Some(f)) => python_float_repr(f),
            (None, None, None) => n.to_string(),
        }),
        _ => None,
    }
}

/// `DecimalField.to_internal_value` for a value that is present and not null.
pub(crate) fn decimal_field(value: &Value, rules: DecimalRules) -> Result<Amount, String> {
    let invalid = || "A valid number is required.".to_string();
    let text = field_text(value).ok_or_else(invalid)?;
    let text = text.trim();
    if text.chars().count() > MAX_STRING_LENGTH {
        return Err("String value too large.".into());
    }
    let parsed = parse_python_decimal(text)
        .map_err(|()| invalid())?
        .ok_or_else(invalid)?;
    let digits = i128::try_from(parsed.digits.len()).unwrap_or(i128::MAX);
    let exponent = parsed.exponent;
    let (total, whole, places) = if exponent >= 0 {
        let total = digits.saturating_add(exponent);
        (total, total, 0)
    } else if digits > -exponent {
        (digits, digits + exponent, -exponent)
    } else {
        (-exponent, 0, -exponent)
    };
    let max_digits = i128::from(rules.max_digits);
    let decimal_places = i128::from(rules.decimal_places);
    if total > max_digits {
        return Err(format!(
            "Ensure that there are no more than {} digits in total.",
            rules.max_digits
        ));
    }
    if places > decimal_places {
        return Err(format!(
            "Ensure that there are no more than {} decimal places.",
            rules.decimal_places
        ));
    }
    if whole > max_digits - decimal_places {
        return Err(format!(
            "Ensure that there are no more than {} digits before the decimal point.",
            rules.max_digits - rules.decimal_places
        ));
    }
    // Quantize to hundredths: coefficient * 10^(exponent + 2); within the
    // checks above this is below 10^20.
    let coefficient: i128 = parsed.digits.parse().map_err(|_| invalid())?;
    let shift = u32::try_from(exponent + 2).map_err(|_| invalid())?;
    let magnitude = 10i128
        .checked_pow(shift)
        .and_then(|p| coefficient.checked_mul(p))
        .ok_or_else(invalid)?;
    Ok(Amount {
        hundredths: if parsed.negative {
            -magnitude
        } else {
            magnitude
        },
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(value: Value) -> Result<String, String> {
        decimal_field(&value, USAGE).map(|a| a.to_string())
    }

    #[test]
    fn accepts_numbers_and_strings_and_quantizes() {
        assert_eq!(check(json!("10.5")), Ok("10.50".into()));
        assert_eq!(check(json!(" 10.50 ")), Ok("10.50".into()));
        assert_eq!(check(json!(12)), Ok("12.00".into()));
        assert_eq!(check(json!(12.5)), Ok("12.50".into()));
        assert_eq!(check(json!("1E+2")), Ok("100.00".into()));
        assert_eq!(check(json!("-0.05")), Ok("-0.05".into()));
        assert_eq!(check(json!("1_000")), Ok("1000.00".into()));
        assert_eq!(check(json!(".5")), Ok("0.50".into()));
        assert_eq!(check(json!("5.")), Ok("5.00".into()));
        assert_eq!(
            check(json!("999999999999999999.99")),
            Ok("999999999999999999.99".into())
        );
    }

    #[test]
    fn refuses_like_drf() {
        let invalid = Err("A valid number is required.".to_string());
        assert_eq!(check(json!("abc")), invalid);
        assert_eq!(check(json!("")), invalid);
        assert_eq!(check(json!("NaN")), invalid);
        assert_eq!(check(json!("-Infinity")), invalid);
        assert_eq!(check(json!(true)), invalid);
        assert_eq!(check(json!([1])), invalid);
        assert_eq!(check(json!("1e")), invalid);
        assert_eq!(
            check(json!("10.505")),
            Err("Ensure that there are no more than 2 decimal places.".into())
        );
        // Trailing zeros count, as in Python's Decimal.
        assert_eq!(
            check(json!("10.500")),
            Err("Ensure that there are no more than 2 decimal places.".into())
        );
        assert_eq!(
            check(json!(0.125)),
            Err("Ensure that there are no more than 2 decimal places.".into())
        );
        assert_eq!(
            check(json!("123456789012345678901")),
            Err("Ensure that there are no more than 20 digits in total.".into())
        );
        assert_eq!(
            check(json!("1234567890123456789")),
            Err("Ensure that there are no more than 18 digits before the decimal point.".into())
        );
        assert_eq!(
            check(json!("0.0000000000000000000001")),
            Err("Ensure that there are no more than 20 digits in total.".into())
        );
        assert_eq!(
            check(json!("1".repeat(1001))),
            Err("String value too large.".into())
        );
    }

    #[test]
    fn floats_are_read_as_python_writes_them() {
        assert_eq!(python_float_repr(12.5), "12.5");
        assert_eq!(python_float_repr(100.0), "100.0");
        assert_eq!(python_float_repr(1e16), "1e+16");
        assert_eq!(python_float_repr(1.5e-5), "1.5e-05");
        assert_eq!(python_float_repr(0.001), "0.001");
        assert_eq!(python_float_repr(-2.25), "-2.25");
        assert_eq!(python_float_repr(1e15), "1000000000000000.0");
    }
}
