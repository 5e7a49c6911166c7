//! Exact decimal column kernels. Numbers in frames are polars `Decimal(38, s)` columns whose
//! scale is known when an expression is compiled; these kernels do the arithmetic JSON-logic
//! needs on the physical i128 values, column at a time, with checked overflow (an overflow is a
//! null, which the meter stage turns into a reject). polars' own decimal arithmetic is not used
//! for multiplication or division: it rounds to the larger scale and truncates.

use polars::prelude::*;
use rust_decimal::Decimal;

/// Largest scale an intermediate value may have.
pub const MAX_SCALE: u32 = 28;
const LIMIT: i128 = 10i128.pow(38);

pub fn dtype(scale: u32) -> DataType {
    DataType::Decimal(38, scale as usize)
}

pub fn pow10(n: u32) -> Option<i128> {
    10i128.checked_pow(n)
}

fn fits(v: i128) -> Option<i128> {
    (v > -LIMIT && v < LIMIT).then_some(v)
}

/// `v` (at scale `from`) at scale `to >= from`.
pub fn upscale(v: i128, from: u32, to: u32) -> Option<i128> {
    v.checked_mul(pow10(to - from)?).and_then(fits)
}

/// Division keeping 4 decimals, rounding half away from zero (Togai's HALF_UP).
pub fn div4(a: i128, sa: u32, b: i128, sb: u32) -> Option<i128> {
    if b == 0 {
        return None;
    }
    // a/10^sa / (b/10^sb) * 10^4 = a * 10^(sb+4) / (b * 10^sa)
    let n = a.checked_mul(pow10(sb + 4)?)?;
    let d = b.checked_mul(pow10(sa)?)?;
    let q = n / d;
    let r = n % d;
    let q = if r.unsigned_abs().checked_mul(2)? >= d.unsigned_abs() {
        if (n < 0) != (d < 0) {
            q - 1
        } else {
            q + 1
        }
    } else {
        q
    };
    fits(q)
}

/// Mantissa and scale of a decimal constant.
pub fn const_parts(d: Decimal) -> (i128, u32) {
    (d.mantissa(), d.scale())
}

/// Decimal constant back from a mantissa at a scale (`None` beyond rust_decimal's range).
/// Trailing zeros are dropped first, so a wide scale does not make a plain value unrepresentable.
pub fn to_decimal(v: i128, scale: u32) -> Option<Decimal> {
    let (mut v, mut scale) = (v, scale);
    while scale > 0 && v % 10 == 0 {
        v /= 10;
        scale -= 1;
    }
    Decimal::try_from_i128_with_scale(v, scale).ok()
}

fn phys(c: &Column) -> PolarsResult<Int128Chunked> {
    match c.dtype() {
        DataType::Decimal(_, _) => Ok(c.decimal()?.physical().clone()),
        DataType::Null => Ok(Int128Chunked::full_null(c.name().clone(), c.len())),
        dt => polars_bail!(ComputeError: "expected a decimal column, found {dt}"),
    }
}

fn out(name: PlSmallStr, ca: Int128Chunked, scale: u32) -> Column {
    ca.with_name(name).into_decimal_unchecked(38, scale as usize).into_series().into_column()
}

/// Element-wise binary operation of two decimal columns (length-1 columns broadcast).
pub fn binary(a: &Column, b: &Column, scale_out: u32, f: impl Fn(i128, i128) -> Option<i128>) -> PolarsResult<Column> {
    let (x, y) = (phys(a)?, phys(b)?);
    // a column of one value (a literal) stands for every row of the other, even of none
    let n = if x.len() == 1 { y.len() } else { x.len() };
    let get = |ca: &Int128Chunked, i: usize| if ca.len() == 1 { ca.get(0) } else { ca.get(i) };
    let ca: Int128Chunked = if x.len() == n && y.len() == n {
        x.iter()
            .zip(y.iter())
            .map(|(p, q)| match (p, q) {
                (Some(p), Some(q)) => f(p, q),
                _ => None,
            })
            .collect()
    } else {
        (0..n)
            .map(|i| match (get(&x, i), get(&y, i)) {
                (Some(p), Some(q)) => f(p, q),
                _ => None,
            })
            .collect()
    };
    Ok(out(a.name().clone(), ca, scale_out))
}

/// Element-wise unary operation of a decimal column.
pub fn unary(a: &Column, scale_out: u32, f: impl Fn(i128) -> Option<i128>) -> PolarsResult<Column> {
    let ca: Int128Chunked = phys(a)?.iter().map(|p| p.and_then(&f)).collect();
    Ok(out(a.name().clone(), ca, scale_out))
}

/// Element-wise predicate on a decimal column (null stays null).
pub fn predicate(a: &Column, f: impl Fn(i128) -> bool) -> PolarsResult<Column> {
    let ca: BooleanChunked = phys(a)?.iter().map(|p| p.map(&f)).collect();
    Ok(ca.with_name(a.name().clone()).into_series().into_column())
}

/// Element-wise comparison of two decimal columns at the same scale.
pub fn compare(a: &Column, b: &Column, f: impl Fn(i128, i128) -> bool) -> PolarsResult<Column> {
    let (x, y) = (phys(a)?, phys(b)?);
    // a column of one value (a literal) stands for every row of the other, even of none
    let n = if x.len() == 1 { y.len() } else { x.len() };
    let get = |ca: &Int128Chunked, i: usize| if ca.len() == 1 { ca.get(0) } else { ca.get(i) };
    let ca: BooleanChunked = (0..n)
        .map(|i| match (get(&x, i), get(&y, i)) {
            (Some(p), Some(q)) => Some(f(p, q)),
            _ => None,
        })
        .collect();
    Ok(ca.with_name(a.name().clone()).into_series().into_column())
}

/// Parse exact decimal text into (mantissa, scale); `None` if not a plain decimal number.
pub fn parse_text(s: &str) -> Option<(i128, u32)> {
    let s = s.trim();
    let (neg, t) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (int, frac) = match t.find('.') {
        Some(i) => (&t[..i], &t[i + 1..]),
        None => (t, ""),
    };
    if (int.is_empty() && frac.is_empty()) || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut v: i128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        v = v.checked_mul(10)?.checked_add((b - b'0') as i128)?;
    }
    let v = fits(v)?;
    Some((if neg { -v } else { v }, frac.len() as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-value column (a literal) compares with every row of the other column, and with
    /// none when the other has no rows (a part of the input with no events of a kind).
    #[test]
    fn comparison_broadcasts_a_single_value() {
        let col = |v: Vec<Option<i128>>| {
            Int128Chunked::from_iter_options("x".into(), v.into_iter()).into_decimal_unchecked(38, 2).into_series().into_column()
        };
        let one = col(vec![Some(150)]);
        let gt = |a: &Column, b: &Column| compare(a, b, |p, q| p > q).unwrap().bool().unwrap().iter().collect::<Vec<_>>();
        assert_eq!(gt(&col(vec![Some(100), Some(200), None]), &one), vec![Some(false), Some(true), None]);
        assert_eq!(gt(&one, &col(vec![Some(100), Some(200)])), vec![Some(true), Some(false)]);
        assert_eq!(gt(&col(vec![]), &one), vec![]);
        assert_eq!(gt(&one, &col(vec![])), vec![]);
    }

    #[test]
    fn division_keeps_four_places_half_up() {
        assert_eq!(div4(1, 0, 3, 0), Some(3333));
        assert_eq!(div4(2, 0, 3, 0), Some(6667));
        assert_eq!(div4(-2, 0, 3, 0), Some(-6667));
        assert_eq!(div4(12345, 0, 1000, 0), Some(123450));
        assert_eq!(div4(5, 0, 100000, 0), Some(1)); // 0.00005 -> 0.0001
        assert_eq!(div4(15, 1, 3, 0), Some(5000)); // 1.5 / 3 = 0.5
        assert_eq!(div4(1, 0, 0, 0), None);
    }

    #[test]
    fn parses_exact_text() {
        assert_eq!(parse_text("0.123456789012345678"), Some((123456789012345678, 18)));
        assert_eq!(parse_text("-1.50"), Some((-150, 2)));
        assert_eq!(parse_text("12"), Some((12, 0)));
        assert_eq!(parse_text(".5"), Some((5, 1)));
        assert_eq!(parse_text("1e3"), None);
        assert_eq!(parse_text("abc"), None);
        assert_eq!(parse_text(""), None);
        assert_eq!(parse_text("999999999999999999999999999999999999999"), None);
        // 10000 at scale 28 has a 33-digit mantissa but is a plain 10000
        assert_eq!(to_decimal(10i128.pow(32), 28).unwrap().to_string(), "10000");
        assert!(to_decimal(10i128.pow(32) + 1, 28).is_none());
    }
}
