//! Numeric readings inside resource values, for history and charts: nodes send `23°C`,
//! `1015hPa`, `-3.5`, or a JSON number.

use serde_json::Value;

/// The number a value starts with, if any. Booleans and LED states like `"1"` are numbers too
/// as far as this goes; a chart of them is still correct.
pub fn numeric(value: &Value) -> Option<f64> {
    match value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => leading_number(text.trim_start()),
        _ => None,
    }
}

fn leading_number(text: &str) -> Option<f64> {
    let bytes = text.as_bytes();
    let mut end = 0;
    if matches!(bytes.first(), Some(b'-' | b'+')) {
        end = 1;
    }
    let digits_start = end;
    while end < bytes.len() && bytes[end].is_ascii_digit() {
        end += 1;
    }
    if end < bytes.len() && bytes[end] == b'.' {
        let after_dot = end + 1;
        let mut fraction_end = after_dot;
        while fraction_end < bytes.len() && bytes[fraction_end].is_ascii_digit() {
            fraction_end += 1;
        }
        if fraction_end > after_dot {
            end = fraction_end;
        }
    }
    if end == digits_start {
        return None;
    }
    text[..end].parse::<f64>().ok().filter(|n| n.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_numbers_with_units() {
        assert_eq!(numeric(&json!("23°C")), Some(23.0));
        assert_eq!(numeric(&json!("1015hPa")), Some(1015.0));
        assert_eq!(numeric(&json!(" -3.5 C")), Some(-3.5));
        assert_eq!(numeric(&json!("12.")), Some(12.0));
        assert_eq!(numeric(&json!(".5V")), Some(0.5));
        assert_eq!(numeric(&json!(7)), Some(7.0));
        assert_eq!(numeric(&json!(0.25)), Some(0.25));
    }

    #[test]
    fn leaves_non_numbers_alone() {
        for value in [
            json!("riot"),
            json!(""),
            json!("-"),
            json!("°C"),
            json!(true),
            json!(null),
            json!([1]),
            json!({"value": 1}),
        ] {
            assert_eq!(numeric(&value), None, "{value}");
        }
    }
}
