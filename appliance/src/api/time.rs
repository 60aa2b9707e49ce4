//! Times at the API's edge: parsing `since`/`until` parameters (unix
//! seconds, fractions allowed, or RFC 3339) and printing RFC 3339 with
//! nanoseconds for log timestamps. Always UTC; no time zone database.

const NS: i64 = 1_000_000_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01 (`civil_from_days`).
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// `2006-01-02T15:04:05.000000000Z` for unix nanoseconds.
pub fn format_rfc3339_nanos(ns: i64) -> String {
    let secs = ns.div_euclid(NS);
    let frac = ns.rem_euclid(NS);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let y = digits(s.get(0..4)?)?;
    let mo = digits(s.get(5..7)?)?;
    let d = digits(s.get(8..10)?)?;
    let h = digits(s.get(11..13)?)?;
    let mi = digits(s.get(14..16)?)?;
    let sec = digits(s.get(17..19)?)?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    let mut frac = 0i64;
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        let (f, r) = r.split_at(n);
        let mut padded = f.chars().take(9).collect::<String>();
        while padded.len() < 9 {
            padded.push('0');
        }
        frac = digits(&padded)?;
        rest = r;
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = rest.get(1..)?.split_once(':')?;
            if oh.len() != 2 || om.len() != 2 {
                return None;
            }
            sign * (digits(oh)? * 3600 + digits(om)? * 60)
        }
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset;
    secs.checked_mul(NS)?.checked_add(frac)
}

/// Parses a point in time to unix nanoseconds: unix seconds (`1700000000`,
/// `1700000000.5`) or RFC 3339 (`2023-11-14T22:13:20Z`,
/// `2023-11-14T23:13:20.5+01:00`).
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "{s:?} is neither unix seconds (e.g. 1700000000.5) nor RFC 3339 (e.g. 2023-11-14T22:13:20Z)"
        )
    };
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        let (neg, int) = match int.strip_prefix('-') {
            Some(i) => (true, i),
            None => (false, int),
        };
        let whole = if int.is_empty() {
            0
        } else {
            digits(int).ok_or_else(bad)?
        };
        let mut f = frac.chars().take(9).collect::<String>();
        if !frac.is_empty() && digits(frac).is_none() {
            return Err(bad());
        }
        while f.len() < 9 {
            f.push('0');
        }
        let ns = whole
            .checked_mul(NS)
            .and_then(|w| w.checked_add(digits(&f).unwrap_or(0)))
            .ok_or_else(bad)?;
        return Ok(if neg { -ns } else { ns });
    }
    parse_rfc3339(s).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        assert_eq!(format_rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        let t = 1_700_000_000 * NS + 123_456_789;
        let text = format_rfc3339_nanos(t);
        assert_eq!(text, "2023-11-14T22:13:20.123456789Z");
        assert_eq!(parse_time(&text), Ok(t));
        assert_eq!(parse_time("2000-02-29T00:00:00Z"), Ok(951_782_400 * NS));
        assert_eq!(
            format_rfc3339_nanos(951_782_400 * NS),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn accepts_unix_seconds_and_offsets() {
        assert_eq!(parse_time("1700000000"), Ok(1_700_000_000 * NS));
        assert_eq!(parse_time("1700000000.5"), Ok(1_700_000_000 * NS + NS / 2));
        assert_eq!(
            parse_time("2023-11-14T23:13:20.5+01:00"),
            Ok(1_700_000_000 * NS + NS / 2)
        );
        assert_eq!(parse_time("2023-11-14 22:13:20z"), Ok(1_700_000_000 * NS));
        for bad in [
            "",
            "yesterday",
            "1.2.3",
            "2023-11-14",
            "2023-13-01T00:00:00Z",
            "2023-11-14T22:13:20",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}
