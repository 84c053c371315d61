//! `%START_TIME%` rendering: a strftime subset compiled once, evaluated in UTC without allocation.

use std::time::{SystemTime, UNIX_EPOCH};

/// One piece of a compiled time format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TimePiece {
    Lit(String),
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    /// Fractional seconds with this many digits (`%3f`; `%f` is 9).
    Frac(u8),
    /// Seconds with this many fractional digits (`%E3S` → `05.123`).
    SecondsFrac(u8),
    /// Seconds since the epoch (`%s`).
    Epoch,
    /// Numeric zone offset (`%z`); always `+0000` since times are rendered in UTC.
    Offset,
    /// Zone name (`%Z`); always `UTC`.
    Zone,
}

/// A broken-down UTC time.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    nanos: u32,
    epoch: u64,
}

/// Envoy's default `%START_TIME%` layout, `2024-01-02T03:04:05.678Z`.
pub(crate) fn default_format() -> Vec<TimePiece> {
    use TimePiece::*;
    vec![
        Year,
        Lit("-".into()),
        Month,
        Lit("-".into()),
        Day,
        Lit("T".into()),
        Hour,
        Lit(":".into()),
        Minute,
        Lit(":".into()),
        SecondsFrac(3),
        Lit("Z".into()),
    ]
}

/// Compiles a strftime-style layout. Returns the offending specifier on error.
pub(crate) fn parse(fmt: &str) -> Result<Vec<TimePiece>, String> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            lit.push(c);
            continue;
        }
        let piece = match chars.next() {
            Some('%') => {
                lit.push('%');
                continue;
            }
            Some('Y') => TimePiece::Year,
            Some('m') => TimePiece::Month,
            Some('d') => TimePiece::Day,
            Some('H') => TimePiece::Hour,
            Some('M') => TimePiece::Minute,
            Some('S') => TimePiece::Second,
            Some('s') => TimePiece::Epoch,
            Some('z') => TimePiece::Offset,
            Some('Z') => TimePiece::Zone,
            Some('f') => TimePiece::Frac(9),
            Some('F') => {
                lit_flush(&mut lit, &mut pieces);
                pieces.extend([
                    TimePiece::Year,
                    TimePiece::Lit("-".into()),
                    TimePiece::Month,
                    TimePiece::Lit("-".into()),
                    TimePiece::Day,
                ]);
                continue;
            }
            Some('T') => {
                lit_flush(&mut lit, &mut pieces);
                pieces.extend([
                    TimePiece::Hour,
                    TimePiece::Lit(":".into()),
                    TimePiece::Minute,
                    TimePiece::Lit(":".into()),
                    TimePiece::Second,
                ]);
                continue;
            }
            Some(d @ '1'..='9') if chars.peek() == Some(&'f') => {
                chars.next();
                TimePiece::Frac(d as u8 - b'0')
            }
            Some('E') => {
                let digits = chars.next();
                let s = chars.next();
                match (digits, s) {
                    (Some(d @ '1'..='9'), Some('S')) => TimePiece::SecondsFrac(d as u8 - b'0'),
                    _ => return Err(format!("%E{}{}", opt(digits), opt(s))),
                }
            }
            other => return Err(format!("%{}", opt(other))),
        };
        lit_flush(&mut lit, &mut pieces);
        pieces.push(piece);
    }
    lit_flush(&mut lit, &mut pieces);
    Ok(pieces)
}

fn opt(c: Option<char>) -> String {
    c.map(String::from).unwrap_or_default()
}

fn lit_flush(lit: &mut String, pieces: &mut Vec<TimePiece>) {
    if !lit.is_empty() {
        pieces.push(TimePiece::Lit(std::mem::take(lit)));
    }
}

/// Decimal digits of a number, zero-padded to a width, formatted on the stack: the numbers of
/// a log line without the `fmt` machinery (several times cheaper per field).
pub(crate) struct Digits {
    buf: [u8; MAX_DIGITS],
    start: usize,
}

/// `u64::MAX` has 20 digits.
const MAX_DIGITS: usize = 20;

impl Digits {
    /// `n` with at least `width` digits (at most 20).
    pub(crate) fn new(mut n: u64, width: usize) -> Digits {
        let mut buf = [b'0'; MAX_DIGITS];
        let mut start = MAX_DIGITS;
        while n > 0 {
            start -= 1;
            buf[start] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        // The buffer is pre-filled with zeros, so padding only moves the start.
        start = start.min(MAX_DIGITS - width.clamp(1, MAX_DIGITS));
        Digits { buf, start }
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII digits are ever written.
        std::str::from_utf8(&self.buf[self.start..]).unwrap_or_default()
    }
}

/// Renders `t` in UTC through `out`. Times before the epoch render as the epoch.
pub(crate) fn render<W: std::fmt::Write>(pieces: &[TimePiece], t: SystemTime, out: &mut W) {
    let c = civil(t);
    fn num<W: std::fmt::Write>(out: &mut W, n: u64, width: usize) -> std::fmt::Result {
        out.write_str(Digits::new(n, width).as_str())
    }
    for p in pieces {
        // Writing into a String-backed sink cannot fail.
        let _ = match p {
            TimePiece::Lit(s) => out.write_str(s),
            TimePiece::Year => num(out, c.year.max(0) as u64, 4),
            TimePiece::Month => num(out, u64::from(c.month), 2),
            TimePiece::Day => num(out, u64::from(c.day), 2),
            TimePiece::Hour => num(out, u64::from(c.hour), 2),
            TimePiece::Minute => num(out, u64::from(c.minute), 2),
            TimePiece::Second => num(out, u64::from(c.second), 2),
            TimePiece::Frac(n) => write_frac(out, c.nanos, *n),
            TimePiece::SecondsFrac(n) => {
                let _ = num(out, u64::from(c.second), 2);
                let _ = out.write_str(".");
                write_frac(out, c.nanos, *n)
            }
            TimePiece::Epoch => num(out, c.epoch, 1),
            TimePiece::Offset => out.write_str("+0000"),
            TimePiece::Zone => out.write_str("UTC"),
        };
    }
}

fn write_frac<W: std::fmt::Write>(out: &mut W, nanos: u32, digits: u8) -> std::fmt::Result {
    let digits = digits.clamp(1, 9);
    let value = nanos / 10u32.pow(9 - u32::from(digits));
    out.write_str(Digits::new(u64::from(value), usize::from(digits)).as_str())
}

fn civil(t: SystemTime) -> Civil {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let epoch = since.as_secs();
    let days = (epoch / 86_400) as i64;
    let secs_of_day = (epoch % 86_400) as u32;
    // Days-to-civil conversion over 400-year eras (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: secs_of_day / 3_600,
        minute: secs_of_day / 60 % 60,
        second: secs_of_day % 60,
        nanos: since.subsec_nanos(),
        epoch,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    fn show(fmt: &[TimePiece], t: SystemTime) -> String {
        let mut s = String::new();
        render(fmt, t, &mut s);
        s
    }

    #[test]
    fn default_layout_matches_envoy() {
        // 2024-02-29T23:59:58.123Z, a leap day.
        let t = at(1_709_251_198, 123_456_789);
        assert_eq!(show(&default_format(), t), "2024-02-29T23:59:58.123Z");
        assert_eq!(
            show(&default_format(), at(0, 0)),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn custom_specifiers() {
        let t = at(1_709_251_198, 123_456_789);
        let f = parse("%Y/%m/%d %H:%M:%S.%3f %z %Z %s %6f %f %E2S %F %T 100%%").unwrap();
        assert_eq!(
            show(&f, t),
            "2024/02/29 23:59:58.123 +0000 UTC 1709251198 123456 123456789 58.12 2024-02-29 23:59:58 100%"
        );
        let y2k = at(946_684_800, 0);
        assert_eq!(show(&parse("%F").unwrap(), y2k), "2000-01-01");
        assert_eq!(
            show(&parse("%F").unwrap(), at(4_102_444_800, 0)),
            "2100-01-01"
        );
    }

    #[test]
    fn digits_match_std_formatting() {
        for (n, w) in [
            (0u64, 1),
            (0, 4),
            (7, 2),
            (42, 1),
            (1_000, 2),
            (u64::MAX, 1),
            (5, 25),
        ] {
            let want = format!("{n:0w$}", w = w.min(MAX_DIGITS));
            assert_eq!(Digits::new(n, w).as_str(), want, "{n} {w}");
        }
    }

    #[test]
    fn unknown_specifier_is_an_error() {
        assert_eq!(parse("%Q").unwrap_err(), "%Q");
        assert_eq!(parse("abc%").unwrap_err(), "%");
        assert_eq!(parse("%E3x").unwrap_err(), "%E3x");
    }
}
