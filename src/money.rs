//! Money: currencies, minor units and rounding. **The only place where amounts are rounded.**
//!
//! Every billed line is computed at full precision and rounded once, here, to the currency's
//! ISO 4217 minor unit with the organisation's rounding mode. `Decimal::round_dp` (banker's
//! rounding by default) is never used anywhere in billrun.

use rust_decimal::{Decimal, RoundingStrategy};
use serde::Deserialize;

/// How a line amount is rounded to the currency's minor unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum RoundingMode {
    /// 0.125 → 0.13, −0.125 → −0.13 (the default; Togai's HALF_UP).
    #[default]
    #[serde(rename = "HALF_AWAY_FROM_ZERO", alias = "HALF_UP")]
    HalfAwayFromZero,
    /// 0.125 → 0.12, 0.135 → 0.14 (banker's rounding), only when the organisation asks for it.
    #[serde(rename = "HALF_EVEN")]
    HalfEven,
}

impl RoundingMode {
    fn strategy(self) -> RoundingStrategy {
        match self {
            RoundingMode::HalfAwayFromZero => RoundingStrategy::MidpointAwayFromZero,
            RoundingMode::HalfEven => RoundingStrategy::MidpointNearestEven,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RoundingMode::HalfAwayFromZero => "HALF_AWAY_FROM_ZERO",
            RoundingMode::HalfEven => "HALF_EVEN",
        }
    }
}

/// ISO 4217 minor units (number of decimal places) of a currency code, `None` if unknown.
pub fn minor_units(code: &str) -> Option<u32> {
    let units = match code {
        // three decimals
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        // no decimals
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX" | "UYI" | "VND" | "VUV" | "XAF" | "XOF"
        | "XPF" => 0,
        // four decimals
        "CLF" | "UYW" => 4,
        // two decimals
        "AED" | "AFN" | "ALL" | "AMD" | "ANG" | "AOA" | "ARS" | "AUD" | "AWG" | "AZN" | "BAM" | "BBD" | "BDT" | "BGN" | "BMD" | "BND"
        | "BOB" | "BRL" | "BSD" | "BTN" | "BWP" | "BYN" | "BZD" | "CAD" | "CDF" | "CHF" | "CNY" | "COP" | "CRC" | "CUP" | "CVE" | "CZK"
        | "DKK" | "DOP" | "DZD" | "EGP" | "ERN" | "ETB" | "EUR" | "FJD" | "FKP" | "GBP" | "GEL" | "GHS" | "GIP" | "GMD" | "GTQ" | "GYD"
        | "HKD" | "HNL" | "HTG" | "HUF" | "IDR" | "ILS" | "INR" | "IRR" | "JMD" | "KES" | "KGS" | "KHR" | "KPW" | "KYD" | "KZT" | "LAK"
        | "LBP" | "LKR" | "LRD" | "LSL" | "MAD" | "MDL" | "MGA" | "MKD" | "MMK" | "MNT" | "MOP" | "MRU" | "MUR" | "MVR" | "MWK" | "MXN"
        | "MYR" | "MZN" | "NAD" | "NGN" | "NIO" | "NOK" | "NPR" | "NZD" | "PAB" | "PEN" | "PGK" | "PHP" | "PKR" | "PLN" | "QAR" | "RON"
        | "RSD" | "RUB" | "SAR" | "SBD" | "SCR" | "SDG" | "SEK" | "SGD" | "SHP" | "SLE" | "SOS" | "SRD" | "SSP" | "STN" | "SVC" | "SYP"
        | "SZL" | "THB" | "TJS" | "TMT" | "TOP" | "TRY" | "TTD" | "TWD" | "TZS" | "UAH" | "USD" | "UYU" | "UZS" | "VES" | "WST" | "XCD"
        | "YER" | "ZAR" | "ZMW" | "ZWG" => 2,
        _ => return None,
    };
    Some(units)
}

/// A currency with its minor unit, validated at load time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Currency {
    pub code: String,
    pub minor_units: u32,
}

impl Currency {
    pub fn new(code: &str) -> Option<Currency> {
        minor_units(code).map(|minor_units| Currency { code: code.to_string(), minor_units })
    }
}

/// Round a full-precision amount to the currency's minor unit. The one rounding point of billing.
pub fn round_line(amount: Decimal, currency: &Currency, mode: RoundingMode) -> Decimal {
    let mut r = amount.round_dp_with_strategy(currency.minor_units, mode.strategy());
    r.rescale(currency.minor_units);
    r
}

/// Round `numerator / denominator` to the currency's minor unit exactly: the division is done
/// in integers, so a proration like `49 × 17 / 31` is rounded from its true value, never from
/// a truncated quotient. `None` when the denominator is zero or the numbers are out of range.
pub fn round_ratio(numerator: Decimal, denominator: Decimal, currency: &Currency, mode: RoundingMode) -> Option<Decimal> {
    if denominator.is_zero() {
        return None;
    }
    // n/d at scale u: q = n_m * 10^(u + sd - sn) / d_m, with n = n_m/10^sn, d = d_m/10^sd
    let (nm, sn) = (numerator.mantissa(), numerator.scale() as i32);
    let (dm, sd) = (denominator.mantissa(), denominator.scale() as i32);
    let u = currency.minor_units as i32;
    let e = u + sd - sn;
    let (mut n, mut d) = (nm, dm);
    if e >= 0 {
        n = n.checked_mul(10i128.checked_pow(e as u32)?)?;
    } else {
        d = d.checked_mul(10i128.checked_pow((-e) as u32)?)?;
    }
    let (q, r) = (n / d, n % d);
    let twice = r.unsigned_abs().checked_mul(2)?;
    let away = (n < 0) != (d < 0);
    let bump = match twice.cmp(&d.unsigned_abs()) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => match mode {
            RoundingMode::HalfAwayFromZero => true,
            RoundingMode::HalfEven => q % 2 != 0,
        },
    };
    let q = if bump {
        if away {
            q - 1
        } else {
            q + 1
        }
    } else {
        q
    };
    Decimal::try_from_i128_with_scale(q, currency.minor_units).ok()
}

/// Short text of invoice trees and line-item rows (formatted numbers, ids, codes): inline up to
/// 24 bytes, so the millions of them in a bill run are not each a heap allocation.
pub type Text = compact_str::CompactString;

/// Format an amount at the currency's scale ("12.50", "1200" for JPY, "0.125" for KWD).
pub fn format_amount(amount: Decimal, currency: &Currency) -> String {
    amount_text(amount, currency).into_string()
}

/// Format an exact (unrounded) decimal without trailing zeros ("0.0125", "10").
pub fn format_exact(d: Decimal) -> String {
    exact_text(d).into_string()
}

/// [`format_amount`] as [`Text`].
pub fn amount_text(amount: Decimal, currency: &Currency) -> Text {
    let mut a = amount;
    a.rescale(currency.minor_units);
    decimal_text(a)
}

/// [`format_exact`] as [`Text`].
pub fn exact_text(d: Decimal) -> Text {
    decimal_text(d.normalize())
}

/// `d.to_string()`, character for character (a negative zero keeps its sign, `scale` decimals),
/// without `Display`: rust_decimal finds the digits one division by ten of 96 bits at a time,
/// and a bill run formats millions of numbers (`money::tests::decimal_text_is_display`).
fn decimal_text(d: Decimal) -> Text {
    let mut digits = itoa::Buffer::new();
    let digits = match d.mantissa().unsigned_abs() {
        0 => "",
        m => digits.format(m),
    };
    let scale = d.scale() as usize;
    let whole = digits.len().saturating_sub(scale);
    let mut t = Text::with_capacity(usize::from(d.is_sign_negative()) + whole.max(1) + if scale > 0 { scale + 1 } else { 0 });
    if d.is_sign_negative() {
        t.push('-');
    }
    t.push_str(if whole > 0 { &digits[..whole] } else { "0" });
    if scale > 0 {
        t.push('.');
        for _ in digits.len()..scale {
            t.push('0');
        }
        t.push_str(&digits[whole..]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    proptest::proptest! {
        #[test]
        fn decimal_text_is_display(lo: u32, mid: u32, hi: u32, negative: bool, scale in 0u32..=28, small in 0u32..1000) {
            for m in [Decimal::from_parts(lo, mid, hi, negative, scale), Decimal::from_parts(small, 0, 0, negative, scale)] {
                proptest::prop_assert_eq!(decimal_text(m).to_string(), m.to_string());
                proptest::prop_assert_eq!(exact_text(m).to_string(), m.normalize().to_string());
            }
        }
    }

    #[test]
    fn decimal_text_spells_zeros_and_signs_as_display() {
        for s in [
            "0",
            "0.00",
            "-0.00",
            "-0",
            "0.005",
            "-0.005",
            "10",
            "100.10",
            "-12345.678",
            "79228162514264337593543950335",
            "0.0000000000000000000000000001",
        ] {
            assert_eq!(decimal_text(d(s)).as_str(), d(s).to_string(), "{s}");
        }
    }

    #[test]
    fn rounds_half_away_from_zero_by_default() {
        let usd = Currency::new("USD").unwrap();
        let m = RoundingMode::default();
        assert_eq!(round_line(d("0.125"), &usd, m).to_string(), "0.13");
        assert_eq!(round_line(d("-0.125"), &usd, m).to_string(), "-0.13");
        assert_eq!(round_line(d("0.005"), &usd, m).to_string(), "0.01");
        assert_eq!(round_line(d("0.0049999"), &usd, m).to_string(), "0.00");
        assert_eq!(round_line(d("7"), &usd, m).to_string(), "7.00");
    }

    #[test]
    fn rounds_half_even_when_asked() {
        let usd = Currency::new("USD").unwrap();
        let m = RoundingMode::HalfEven;
        assert_eq!(round_line(d("0.125"), &usd, m).to_string(), "0.12");
        assert_eq!(round_line(d("0.135"), &usd, m).to_string(), "0.14");
    }

    #[test]
    fn ratios_round_from_their_true_value() {
        let usd = Currency::new("USD").unwrap();
        let m = RoundingMode::default();
        // 49 × 17 / 31 = 26.870967… → 26.87
        assert_eq!(round_ratio(d("833"), d("31"), &usd, m).unwrap().to_string(), "26.87");
        // 0.25 / 2 = 0.125 exactly: a tie
        assert_eq!(round_ratio(d("0.25"), d("2"), &usd, m).unwrap().to_string(), "0.13");
        assert_eq!(round_ratio(d("0.25"), d("2"), &usd, RoundingMode::HalfEven).unwrap().to_string(), "0.12");
        assert_eq!(round_ratio(d("-0.25"), d("2"), &usd, m).unwrap().to_string(), "-0.13");
        assert_eq!(round_ratio(d("49"), d("1"), &usd, m).unwrap().to_string(), "49.00");
        assert!(round_ratio(d("1"), d("0"), &usd, m).is_none());
    }

    proptest::proptest! {
        /// A prorated fee over a whole cycle (days = cycle days) is exactly the unprorated fee.
        #[test]
        fn whole_cycle_proration_equals_the_fee(cents in 0i64..10_000_000, scale in 0u32..4, days in 1i64..367, half_even in proptest::bool::ANY) {
            let rate = Decimal::new(cents, scale);
            let m = if half_even { RoundingMode::HalfEven } else { RoundingMode::HalfAwayFromZero };
            for code in ["USD", "JPY", "KWD"] {
                let c = Currency::new(code).unwrap();
                let prorated = round_ratio(rate * Decimal::from(days), Decimal::from(days), &c, m).unwrap();
                proptest::prop_assert_eq!(prorated, round_line(rate, &c, m));
            }
        }
    }

    #[test]
    fn minor_units_follow_iso_4217() {
        let m = RoundingMode::default();
        let jpy = Currency::new("JPY").unwrap();
        let kwd = Currency::new("KWD").unwrap();
        assert_eq!(round_line(d("1234.5"), &jpy, m).to_string(), "1235");
        assert_eq!(round_line(d("1.2345"), &kwd, m).to_string(), "1.235");
        assert_eq!(format_amount(d("3"), &kwd), "3.000");
        assert!(Currency::new("XYZ").is_none());
    }
}
