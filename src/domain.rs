//! Validated request values: parse once at the edge, trust afterwards.
//!
//! Amounts are parsed exactly from the JSON text (number or string) into minor units —
//! never through a float — and rendered back as decimal strings.

use serde_json::value::RawValue;
use tally_actors::{AMOUNT_MAX_MINOR, AccountId, Amount};

/// Minor units per major unit: two decimals.
const MINOR_PER_MAJOR: i64 = 100;
/// Usernames: short enough to display, long enough to be distinct.
pub const USERNAME_LENGTH: std::ops::RangeInclusive<usize> = 3..=32;
/// The longest email address RFC 5321 allows.
pub const EMAIL_LENGTH_MAX: usize = 254;
/// Passwords: at least 8 characters (NIST SP 800-63B); at most 128 so hashing a
/// password is bounded work.
pub const PASSWORD_LENGTH: std::ops::RangeInclusive<usize> = 8..=128;

/// Parse an amount from its JSON text: a number (`12`, `12.3`, `12.34`) or a string of
/// the same form (`"12.34"`), more than zero and at most 10^13 minor units.
pub fn parse_amount(raw: &RawValue) -> Result<Amount, String> {
    let text = raw.get().trim();
    let digits = match text.strip_prefix('"').and_then(|rest| rest.strip_suffix('"')) {
        Some(inner) => inner,
        None if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => text,
        None => return Err("must be a decimal number or a string such as \"12.34\"".into()),
    };
    let minor = parse_decimal_minor(digits)?;
    Amount::from_minor(minor).map_err(|error| match error {
        tally_actors::AmountError::NotPositive => "must be greater than zero".to_string(),
        tally_actors::AmountError::TooLarge => {
            format!("must be at most {}", format_minor(AMOUNT_MAX_MINOR))
        }
    })
}

/// Parse a limit from its JSON text: like an amount, but zero is allowed.
pub fn parse_limit(raw: &RawValue) -> Result<i64, String> {
    let text = raw.get().trim();
    let digits = match text.strip_prefix('"').and_then(|rest| rest.strip_suffix('"')) {
        Some(inner) => inner,
        None if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => text,
        None => return Err("must be a decimal number or a string such as \"12.34\"".into()),
    };
    if digits.starts_with('-') {
        return Err("must be zero or more".into());
    }
    let minor = parse_decimal_minor(digits)?;
    if minor > AMOUNT_MAX_MINOR {
        return Err(format!("must be at most {}", format_minor(AMOUNT_MAX_MINOR)));
    }
    Ok(minor)
}

/// `"12.34"` → 1234, exactly; anything but plain decimal notation with at most two
/// fractional digits is refused.
fn parse_decimal_minor(text: &str) -> Result<i64, String> {
    const SHAPE: &str = "must be a plain decimal with at most 2 fractional digits, such as 12.34";
    if let Some(rest) = text.strip_prefix('-')
        && !rest.is_empty()
        && rest.chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        return Err("must be greater than zero".into());
    }
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (text, ""),
    };
    if whole.is_empty() || !whole.chars().all(|c| c.is_ascii_digit()) {
        return Err(SHAPE.into());
    }
    if text.contains('.') && (fraction.is_empty() || !fraction.chars().all(|c| c.is_ascii_digit())) {
        return Err(SHAPE.into());
    }
    if fraction.len() > 2 {
        return Err("has more than 2 decimal places".into());
    }
    // Digits beyond what can be valid are refused before any arithmetic.
    if whole.trim_start_matches('0').len() > 15 {
        return Err(format!("must be at most {}", format_minor(AMOUNT_MAX_MINOR)));
    }
    let whole: i64 = whole.parse().map_err(|_| SHAPE.to_string())?;
    let fraction: i64 = format!("{fraction:0<2}").parse().map_err(|_| SHAPE.to_string())?;
    whole
        .checked_mul(MINOR_PER_MAJOR)
        .and_then(|minor| minor.checked_add(fraction))
        .ok_or_else(|| format!("must be at most {}", format_minor(AMOUNT_MAX_MINOR)))
}

/// 1234 → `"12.34"`, -5 → `"-0.05"`.
pub fn format_minor(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let magnitude = minor.unsigned_abs();
    let per_major = MINOR_PER_MAJOR as u64;
    format!("{sign}{}.{:02}", magnitude / per_major, magnitude % per_major)
}

/// A user id from a request: a positive integer (0 is the system account).
pub fn parse_user_id(raw: i64) -> Result<AccountId, String> {
    if raw <= 0 {
        return Err("must be a positive user id".into());
    }
    AccountId::new(raw).map_err(|error| error.to_string())
}

pub fn validate_username(username: &str) -> Result<String, String> {
    let length = username.chars().count();
    if !USERNAME_LENGTH.contains(&length) {
        return Err(format!(
            "must have {} to {} characters",
            USERNAME_LENGTH.start(),
            USERNAME_LENGTH.end()
        ));
    }
    if !username
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err("may contain only letters, digits, '_', '-' and '.'".into());
    }
    Ok(username.to_string())
}

/// A plausible address, stored lower-cased. Deliverability is not this service's
/// concern; shape is.
pub fn validate_email(email: &str) -> Result<String, String> {
    let email = email.trim();
    if email.len() > EMAIL_LENGTH_MAX {
        return Err(format!("must have at most {EMAIL_LENGTH_MAX} characters"));
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err("must be an email address".into());
    };
    let plausible = !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && !domain.contains('@');
    if !plausible {
        return Err("must be an email address".into());
    }
    Ok(email.to_lowercase())
}

pub fn validate_password(password: &str) -> Result<(), String> {
    let length = password.chars().count();
    if !PASSWORD_LENGTH.contains(&length) {
        return Err(format!(
            "must have {} to {} characters",
            PASSWORD_LENGTH.start(),
            PASSWORD_LENGTH.end()
        ));
    }
    if password.trim().is_empty() {
        return Err("must not be only spaces".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amount(json: &str) -> Result<i64, String> {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        parse_amount(&raw).map(Amount::minor)
    }

    #[test]
    fn limits_are_amounts_that_may_be_zero() {
        let raw = |text: &str| RawValue::from_string(text.to_string()).unwrap();
        assert_eq!(parse_limit(&raw("0")), Ok(0));
        assert_eq!(parse_limit(&raw("\"0.00\"")), Ok(0));
        assert_eq!(parse_limit(&raw("12.5")), Ok(1250));
        assert!(parse_limit(&raw("-1")).is_err());
        assert!(parse_limit(&raw("1.234")).is_err());
        assert!(parse_limit(&raw("true")).is_err());
        assert!(parse_limit(&raw("100000000000.01")).is_err());
    }

    #[test]
    fn amounts_are_parsed_exactly_from_numbers_and_strings() {
        for (json, minor) in [
            ("12", 1200),
            ("12.3", 1230),
            ("12.34", 1234),
            ("\"12.34\"", 1234),
            ("\"0.01\"", 1),
            ("0.10", 10),
            ("100000000000", 10_000_000_000_000),
            ("\"100000000000.00\"", 10_000_000_000_000),
        ] {
            assert_eq!(amount(json), Ok(minor), "{json}");
        }
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        for json in [
            "0",
            "0.00",
            "-1",
            "\"-0.01\"",
            "12.345",
            "\"0.30000000000000004\"",
            "1e2",
            "\"1e2\"",
            "\"\"",
            "\" 12\"",
            "\"12.\"",
            "\".5\"",
            "true",
            "null",
            "[1]",
            "{}",
            "\"abc\"",
            "100000000000.01",
            "99999999999999999999999",
            "\"+5\"",
            "NaN",
        ] {
            let raw: Result<Box<RawValue>, _> = serde_json::from_str(json);
            if let Ok(raw) = raw {
                assert!(parse_amount(&raw).is_err(), "{json} must be refused");
            }
        }
    }

    #[test]
    fn amounts_render_as_two_decimal_strings() {
        assert_eq!(format_minor(1234), "12.34");
        assert_eq!(format_minor(5), "0.05");
        assert_eq!(format_minor(-5), "-0.05");
        assert_eq!(format_minor(0), "0.00");
        assert_eq!(format_minor(i64::MIN), "-92233720368547758.08");
    }

    #[test]
    fn usernames_emails_and_passwords_have_a_shape() {
        assert!(validate_username("alice_1").is_ok());
        assert!(validate_username("al").is_err());
        assert!(validate_username("al ice").is_err());
        assert_eq!(validate_email(" Alice@Example.COM ").unwrap(), "alice@example.com");
        assert!(validate_email("alice@localhost").is_err());
        assert!(validate_email("alice").is_err());
        assert!(validate_password("correct horse").is_ok());
        assert!(validate_password("short").is_err());
        assert!(validate_password("         ").is_err());
    }
}
