//! What the upstream answers with: its name, latency distribution and injected failures.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::str::FromStr;
use std::time::Duration;

use http::{HeaderValue, StatusCode};

/// Address `outrider upstream` listens on when none is given. Default is `0.0.0.0:8080`, so
/// the upstream is reachable from other containers in a demo.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080));

/// Name reported in `x-upstream` and the default body. Default is `upstream`.
pub const DEFAULT_NAME: &str = "upstream";

/// Share of requests answered with an injected failure. Default is `0.0` (never).
pub const DEFAULT_FAIL_RATE: f64 = 0.0;

/// HTTP status of an injected failure. Default is `503`.
pub const DEFAULT_FAIL_STATUS: u16 = 503;

/// Largest configurable body: the body is built once and kept in memory. 64 MiB.
pub const MAX_BODY_SIZE: usize = 64 * 1024 * 1024;

/// The longest latency accepted by [`parse_duration`]-based parsing: one hour. Anything longer is
/// certainly a typo in a load test.
const MAX_PARSED_DURATION: Duration = Duration::from_secs(3600);

const NANOS_PER_MICRO: u64 = 1_000;
const NANOS_PER_MILLI: u64 = 1_000_000;
const NANOS_PER_SEC: u64 = 1_000_000_000;

/// How the built-in upstream behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// Reported in the `x-upstream` response header and in the default body. It must be a valid
    /// header value. Default is [`DEFAULT_NAME`].
    pub name: String,
    /// Delay before each response's headers. Default is [`Latency::None`].
    pub latency: Latency,
    /// Probability in `0.0..=1.0` that a request gets an injected failure. Default is
    /// [`DEFAULT_FAIL_RATE`].
    pub fail_rate: f64,
    /// HTTP status of an injected failure, in `200..=599`. gRPC requests get `grpc-status: 14`
    /// instead. Default is [`DEFAULT_FAIL_STATUS`].
    pub fail_status: u16,
    /// `None`: the body is `hello from <name>\n`; `Some(n)`: `n` bytes, at most
    /// [`MAX_BODY_SIZE`]. Default is `None`.
    pub body_size: Option<usize>,
}

/// The distribution each response's delay is drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Latency {
    /// No delay. The default.
    #[default]
    None,
    /// Always the same delay (`fixed:1ms`).
    Fixed(Duration),
    /// Uniform between the two bounds, inclusive of the lower (`uniform:1ms..5ms`).
    Uniform(Duration, Duration),
    /// Exponential with the given mean (`exp:5ms`), i.e. a Poisson process's gaps.
    Exp(Duration),
}

/// Why an [`UpstreamConfig`] cannot be served.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The name cannot be sent as an HTTP header value.
    #[error("upstream name {0:?} is not a valid header value")]
    InvalidName(String),
    /// The failure rate is not a probability.
    #[error("fail rate {0} is outside 0.0..=1.0")]
    FailRate(f64),
    /// The failure status is not a final HTTP status.
    #[error("fail status {0} is outside 200..=599")]
    FailStatus(u16),
    /// The body would not fit the in-memory limit.
    #[error("body size {0} exceeds the limit of {MAX_BODY_SIZE} bytes")]
    BodySize(usize),
}

/// Why a latency distribution string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LatencyParseError {
    /// The part before `:` names no known distribution.
    #[error(
        "unknown latency {0:?}: expected none, 0, fixed:<duration>, uniform:<min>..<max> or exp:<mean>"
    )]
    UnknownDistribution(String),
    /// `uniform:` was not followed by `<min>..<max>`.
    #[error("uniform latency needs a range <min>..<max>, got {0:?}")]
    MissingRange(String),
    /// The lower bound of a uniform range is above the upper bound.
    #[error("uniform latency range {0:?} has its minimum above its maximum")]
    InvertedRange(String),
    /// A duration inside the distribution is malformed.
    #[error("invalid duration {input:?} in latency")]
    Duration {
        /// The duration text as written.
        input: String,
        /// What is wrong with it.
        #[source]
        source: DurationError,
    },
}

/// Why a duration such as `250us`, `1ms` or `2s` was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing was given.
    #[error("empty duration")]
    Empty,
    /// A non-zero number without a unit.
    #[error("missing unit (one of ns, us, ms, s, m, h)")]
    MissingUnit,
    /// The unit is not one of ns, us, µs, ms, s, m, h.
    #[error("unknown unit (expected one of ns, us, ms, s, m, h)")]
    UnknownUnit,
    /// The number part is not a non-negative decimal number.
    #[error("not a non-negative number")]
    InvalidNumber,
    /// Longer than one hour.
    #[error("longer than one hour")]
    TooLong,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            name: DEFAULT_NAME.to_owned(),
            latency: Latency::None,
            fail_rate: DEFAULT_FAIL_RATE,
            fail_status: DEFAULT_FAIL_STATUS,
            body_size: None,
        }
    }
}

impl UpstreamConfig {
    /// Checks every field; [`crate::serve`] refuses a config that fails this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.name_header()?;
        self.fail_status_code()?;
        if !(0.0..=1.0).contains(&self.fail_rate) {
            return Err(ConfigError::FailRate(self.fail_rate));
        }
        if let Some(n) = self.body_size
            && n > MAX_BODY_SIZE
        {
            return Err(ConfigError::BodySize(n));
        }
        Ok(())
    }

    pub(crate) fn name_header(&self) -> Result<HeaderValue, ConfigError> {
        HeaderValue::from_str(&self.name).map_err(|_| ConfigError::InvalidName(self.name.clone()))
    }

    pub(crate) fn fail_status_code(&self) -> Result<StatusCode, ConfigError> {
        match StatusCode::from_u16(self.fail_status) {
            Ok(code) if (200..=599).contains(&self.fail_status) => Ok(code),
            _ => Err(ConfigError::FailStatus(self.fail_status)),
        }
    }
}

impl Latency {
    /// Draws one delay. Never panics, whatever the bounds: an inverted uniform range yields
    /// its first bound, and an exponential draw that would overflow saturates.
    pub fn sample(&self) -> Duration {
        match *self {
            Latency::None => Duration::ZERO,
            Latency::Fixed(d) => d,
            Latency::Uniform(lo, hi) => match hi.checked_sub(lo) {
                Some(span) if !span.is_zero() => lo.saturating_add(scale(span, fastrand::f64())),
                _ => lo,
            },
            Latency::Exp(mean) => {
                // Inverse CDF; 1 - u is in (0, 1], so the logarithm is finite.
                let factor = -(1.0 - fastrand::f64()).ln();
                scale(mean, factor)
            }
        }
    }
}

impl FromStr for Latency {
    type Err = LatencyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("none") || s == "0" {
            return Ok(Latency::None);
        }
        let Some((kind, arg)) = s.split_once(':') else {
            return Err(LatencyParseError::UnknownDistribution(s.to_owned()));
        };
        match kind.trim().to_ascii_lowercase().as_str() {
            "fixed" => Ok(Latency::Fixed(latency_duration(arg)?)),
            "exp" => Ok(Latency::Exp(latency_duration(arg)?)),
            "uniform" => {
                let Some((lo, hi)) = arg.split_once("..") else {
                    return Err(LatencyParseError::MissingRange(arg.to_owned()));
                };
                let (lo, hi) = (latency_duration(lo)?, latency_duration(hi)?);
                if lo > hi {
                    return Err(LatencyParseError::InvertedRange(arg.to_owned()));
                }
                Ok(Latency::Uniform(lo, hi))
            }
            _ => Err(LatencyParseError::UnknownDistribution(s.to_owned())),
        }
    }
}

impl fmt::Display for Latency {
    /// Writes the form [`Latency::from_str`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Latency::None => f.write_str("none"),
            Latency::Fixed(d) => write!(f, "fixed:{}", DisplayDuration(*d)),
            Latency::Uniform(lo, hi) => {
                write!(
                    f,
                    "uniform:{}..{}",
                    DisplayDuration(*lo),
                    DisplayDuration(*hi)
                )
            }
            Latency::Exp(mean) => write!(f, "exp:{}", DisplayDuration(*mean)),
        }
    }
}

/// Formats a duration in the largest unit that represents it exactly.
struct DisplayDuration(Duration);

impl fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        for (unit, per) in [
            ("s", NANOS_PER_SEC),
            ("ms", NANOS_PER_MILLI),
            ("us", NANOS_PER_MICRO),
        ] {
            let per = u128::from(per);
            if nanos != 0 && nanos.is_multiple_of(per) {
                return write!(f, "{}{unit}", nanos / per);
            }
        }
        write!(f, "{nanos}ns")
    }
}

/// Parses a duration: a non-negative decimal number and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`,
/// `h`), e.g. `250us`, `1.5ms`, `2s`. A bare `0` is zero. At most one hour.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return Err(DurationError::InvalidNumber);
    }
    let per_unit: u64 = match unit.trim() {
        "ns" => 1,
        "us" | "µs" => NANOS_PER_MICRO,
        "ms" => NANOS_PER_MILLI,
        "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => 3600 * NANOS_PER_SEC,
        "" => {
            return match number.parse::<f64>() {
                Ok(0.0) => Ok(Duration::ZERO),
                Ok(_) => Err(DurationError::MissingUnit),
                Err(_) => Err(DurationError::InvalidNumber),
            };
        }
        _ => return Err(DurationError::UnknownUnit),
    };
    let nanos = if number.contains('.') {
        let v: f64 = number.parse().map_err(|_| DurationError::InvalidNumber)?;
        let nanos = (v * per_unit as f64).round();
        if !nanos.is_finite() || nanos > MAX_PARSED_DURATION.as_nanos() as f64 {
            return Err(DurationError::TooLong);
        }
        nanos as u64
    } else {
        let v: u64 = number.parse().map_err(|_| DurationError::TooLong)?;
        v.checked_mul(per_unit).ok_or(DurationError::TooLong)?
    };
    let d = Duration::from_nanos(nanos);
    if d > MAX_PARSED_DURATION {
        return Err(DurationError::TooLong);
    }
    Ok(d)
}

fn latency_duration(s: &str) -> Result<Duration, LatencyParseError> {
    parse_duration(s).map_err(|source| LatencyParseError::Duration {
        input: s.trim().to_owned(),
        source,
    })
}

/// `d * factor`, saturating instead of panicking on overflow, NaN or a negative factor.
fn scale(d: Duration, factor: f64) -> Duration {
    let secs = d.as_secs_f64() * factor;
    if secs > 0.0 {
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn parses_every_form() {
        assert_eq!("none".parse(), Ok(Latency::None));
        assert_eq!(" 0 ".parse(), Ok(Latency::None));
        assert_eq!("fixed:1ms".parse(), Ok(Latency::Fixed(ms(1))));
        assert_eq!(
            "fixed:250us".parse(),
            Ok(Latency::Fixed(Duration::from_micros(250)))
        );
        assert_eq!(
            "uniform:1ms..5ms".parse(),
            Ok(Latency::Uniform(ms(1), ms(5)))
        );
        assert_eq!("exp:2s".parse(), Ok(Latency::Exp(Duration::from_secs(2))));
        assert_eq!(
            "fixed:1.5ms".parse(),
            Ok(Latency::Fixed(Duration::from_micros(1500)))
        );
        assert_eq!("FIXED:0".parse(), Ok(Latency::Fixed(Duration::ZERO)));
    }

    #[test]
    fn rejects_with_clear_errors() {
        assert_eq!(
            "gauss:1ms".parse::<Latency>(),
            Err(LatencyParseError::UnknownDistribution("gauss:1ms".into()))
        );
        assert_eq!(
            "5ms".parse::<Latency>(),
            Err(LatencyParseError::UnknownDistribution("5ms".into()))
        );
        assert_eq!(
            "uniform:5ms".parse::<Latency>(),
            Err(LatencyParseError::MissingRange("5ms".into()))
        );
        assert_eq!(
            "uniform:5ms..1ms".parse::<Latency>(),
            Err(LatencyParseError::InvertedRange("5ms..1ms".into()))
        );
        let err = "fixed:5".parse::<Latency>().unwrap_err();
        assert_eq!(
            err,
            LatencyParseError::Duration {
                input: "5".into(),
                source: DurationError::MissingUnit
            }
        );
        assert!(err.to_string().contains("\"5\""));
        assert_eq!(parse_duration("5parsecs"), Err(DurationError::UnknownUnit));
        assert_eq!(parse_duration("ms"), Err(DurationError::InvalidNumber));
        assert_eq!(parse_duration("-1ms"), Err(DurationError::InvalidNumber));
        assert_eq!(parse_duration("1.2.3ms"), Err(DurationError::InvalidNumber));
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("2h"), Err(DurationError::TooLong));
        assert_eq!(
            parse_duration("99999999999999999999999s"),
            Err(DurationError::TooLong)
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "none",
            "fixed:1ms",
            "fixed:250us",
            "fixed:7ns",
            "uniform:1ms..2s",
            "exp:1500us",
        ] {
            let l: Latency = s.parse().unwrap();
            assert_eq!(l.to_string(), s);
            assert_eq!(l.to_string().parse::<Latency>().unwrap(), l);
        }
    }

    #[test]
    fn samples_stay_in_bounds() {
        let uni = Latency::Uniform(ms(1), ms(5));
        let exp = Latency::Exp(ms(5));
        let mut total = Duration::ZERO;
        for _ in 0..10_000 {
            let d = uni.sample();
            assert!(d >= ms(1) && d < ms(5), "{d:?}");
            total += exp.sample();
        }
        let mean = total / 10_000;
        assert!(mean > ms(4) && mean < ms(6), "exp mean {mean:?}");
        assert_eq!(Latency::Uniform(ms(5), ms(1)).sample(), ms(5));
        assert_eq!(Latency::Fixed(ms(3)).sample(), ms(3));
        assert_eq!(Latency::None.sample(), Duration::ZERO);
        // Must saturate rather than panic.
        let _ = Latency::Exp(Duration::MAX).sample();
    }

    #[test]
    fn validates_config() {
        assert_eq!(UpstreamConfig::default().validate(), Ok(()));
        let bad = |f: fn(&mut UpstreamConfig)| {
            let mut c = UpstreamConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert_eq!(bad(|c| c.fail_rate = 1.5), ConfigError::FailRate(1.5));
        assert!(matches!(
            bad(|c| c.fail_rate = f64::NAN),
            ConfigError::FailRate(_)
        ));
        assert_eq!(bad(|c| c.fail_status = 99), ConfigError::FailStatus(99));
        assert_eq!(bad(|c| c.fail_status = 600), ConfigError::FailStatus(600));
        assert_eq!(
            bad(|c| c.name = "a\nb".into()),
            ConfigError::InvalidName("a\nb".into())
        );
        assert_eq!(
            bad(|c| c.body_size = Some(MAX_BODY_SIZE + 1)),
            ConfigError::BodySize(MAX_BODY_SIZE + 1)
        );
    }
}
