//! Keyset pagination shared by the list calls.
//!
//! A page token names the last item of the previous page by its position in
//! the list's ordering, `(create_time, key)`, where the key breaks ties
//! between items created in the same microsecond. The next page starts right
//! after it, so items that arrive meanwhile never shift a page: nothing is
//! returned twice or skipped. Tokens are opaque to clients: hex of the
//! position.

use chrono::{DateTime, Utc};

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;

/// Latest creation time a real token can hold: the end of year 9999.
const MAX_MICROS: i64 = 253_402_300_800_000_000;

/// The page size to use for a requested one: 0 means the default, larger
/// than the maximum means the maximum. `None` for a negative size.
pub fn page_size(requested: i32) -> Option<i64> {
    match requested {
        0 => Some(DEFAULT_PAGE_SIZE),
        n if n < 0 => None,
        n => Some(i64::from(n).min(MAX_PAGE_SIZE)),
    }
}

/// A token for the position `(create_time, key)`.
pub fn encode_token(create_time: DateTime<Utc>, key: &[u8]) -> String {
    create_time
        .timestamp_micros()
        .to_be_bytes()
        .iter()
        .chain(key)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads a token made by `encode_token` with a key of `key_len` bytes;
/// `None` for anything else.
pub fn decode_token(token: &str, key_len: usize) -> Option<(DateTime<Utc>, Vec<u8>)> {
    let hex_len = 2 * (8 + key_len);
    if token.len() != hex_len || !token.is_ascii() {
        return None;
    }
    let bytes: Vec<u8> = (0..hex_len)
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16).ok())
        .collect::<Option<_>>()?;
    let micros = i64::from_be_bytes(bytes[..8].try_into().ok()?);
    // Issued tokens hold real creation times; anything outside 1970..10000
    // is forged and would only make the query fail.
    if !(0..MAX_MICROS).contains(&micros) {
        return None;
    }
    Some((
        DateTime::from_timestamp_micros(micros)?,
        bytes[8..].to_vec(),
    ))
}

/// Splits rows fetched with a limit of `page_size + 1` into the page and the
/// token of the next one (empty when this is the last page).
pub fn split_page<T>(
    mut rows: Vec<T>,
    page_size: i64,
    token_of: impl Fn(&T) -> String,
) -> (Vec<T>, String) {
    let page_size = usize::try_from(page_size).unwrap_or(usize::MAX);
    if rows.len() <= page_size {
        return (rows, String::new());
    }
    rows.truncate(page_size);
    let token = rows.last().map(token_of).unwrap_or_default();
    (rows, token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_to_the_microsecond() {
        let time = DateTime::from_timestamp_micros(1_764_120_000_123_456).unwrap();
        let key = [7u8; 16];
        assert_eq!(
            decode_token(&encode_token(time, &key), 16),
            Some((time, key.to_vec()))
        );
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = encode_token(Utc::now(), &[1, 2, 3, 4, 5, 6, 7, 8]);
        let forged_time = encode_token(DateTime::from_timestamp_micros(0).unwrap(), &[0; 8])
            .replacen("00", "ff", 1);
        for bad in [
            "",
            "abc",
            &good[..good.len() - 1],
            &format!("{good}0"),
            &good.replacen(&good[..2], "zz", 1),
            "é".repeat(16).as_str(),
            forged_time.as_str(),
        ] {
            assert_eq!(decode_token(bad, 8), None, "{bad:?}");
        }
        // A token of another list (another key length) is refused too.
        assert_eq!(decode_token(&good, 16), None);
    }

    #[test]
    fn page_sizes_default_clamp_and_refuse_negatives() {
        assert_eq!(page_size(0), Some(50));
        assert_eq!(page_size(7), Some(7));
        assert_eq!(page_size(10_000), Some(500));
        assert_eq!(page_size(-1), None);
    }

    #[test]
    fn a_full_extra_row_means_another_page() {
        let (page, token) = split_page(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!((page, token.as_str()), (vec![1, 2], "2"));
        let (page, token) = split_page(vec![1, 2], 2, |n| n.to_string());
        assert_eq!((page, token.as_str()), (vec![1, 2], ""));
    }
}
