//! How events are written to the spill files: narrower than they are held.
//!
//! Spilled rows are written once and read back once; at 50M events the full-width rows were
//! ~150 bytes each (7.6 GB) and writing them outran the page cache. [`narrow`] encodes, per
//! batch and column:
//! - a text column whose every value is a canonical lowercase UUID as 16 bytes (36 + 4 before),
//! - a text column of at most 256 distinct values as a dictionary with one-byte keys,
//! - a column without any value as the Null type (no buffer at all).
//!
//! Anything else is written as it is. [`widen`] with the batch's original schema gives back the
//! same values in the same columns, the encoded text as string views (what the frame hands to
//! polars), so nothing downstream knows about the spill (a property test checks the round trip).

use std::sync::Arc;

use arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, FixedSizeBinaryArray, RecordBatch, RecordBatchOptions, StringArray, StringBuilder,
    StringDictionaryBuilder, StringViewArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt8Type};
use arrow::error::ArrowError;

use crate::assign::uuid_bits;

const UUID_BYTES: i32 = 16;

/// The batch as written to a spill file (see the module documentation).
pub fn narrow(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    if batch.num_rows() == 0 {
        return Ok(batch.clone());
    }
    let schema = batch.schema();
    // each column on its own, on every core
    let columns: Vec<ArrayRef> = {
        use rayon::prelude::*;
        batch.columns().par_iter().map(narrow_column).collect()
    };
    let fields: Vec<Arc<Field>> = schema
        .fields()
        .iter()
        .zip(&columns)
        .map(
            |(f, c)| {
                if c.data_type() == f.data_type() {
                    Arc::clone(f)
                } else {
                    Arc::new(Field::new(f.name(), c.data_type().clone(), true))
                }
            },
        )
        .collect();
    RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields).with_metadata(schema.metadata().clone())),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
}

fn narrow_column(c: &ArrayRef) -> ArrayRef {
    if c.data_type() != &DataType::Null && c.null_count() == c.len() {
        return new_null_array(&DataType::Null, c.len());
    }
    // string views are written as `Utf8` (their text in one buffer, not the pages they point into)
    let utf8 = match c.data_type() {
        DataType::Utf8View => arrow::compute::cast(c, &DataType::Utf8).expect("string views cast to Utf8"),
        _ => Arc::clone(c),
    };
    if let Some(s) = utf8.as_string_opt::<i32>() {
        if let Some(u) = uuids(s) {
            return u;
        }
        if let Some(d) = dictionary(s) {
            return d;
        }
    }
    utf8
}

/// Every value as its 128 bits, or `None` at the first value that is not a canonical UUID.
fn uuids(s: &StringArray) -> Option<ArrayRef> {
    let mut bytes = Vec::with_capacity(s.len() * UUID_BYTES as usize);
    for v in s.iter() {
        match v {
            Some(v) => bytes.extend_from_slice(&uuid_bits(v)?.to_be_bytes()),
            None => bytes.extend_from_slice(&[0; UUID_BYTES as usize]),
        }
    }
    Some(Arc::new(FixedSizeBinaryArray::new(UUID_BYTES, bytes.into(), s.nulls().cloned())))
}

/// The column dictionary-encoded, or `None` past 256 distinct values.
fn dictionary(s: &StringArray) -> Option<ArrayRef> {
    let mut b = StringDictionaryBuilder::<UInt8Type>::with_capacity(s.len(), 16, 256);
    for v in s.iter() {
        match v {
            Some(v) => {
                b.append(v).ok()?;
            }
            None => b.append_null(),
        }
    }
    Some(Arc::new(b.finish()))
}

/// A spilled batch back in its original schema, except that the text columns `narrow` encoded
/// come back as string views (`Utf8View`) rather than `Utf8`: the layout polars holds text in,
/// built without copying a dictionary's strings once per row. Cast to the original types, it
/// is the very batch `narrow` took.
pub fn widen(batch: RecordBatch, original: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    if batch.schema().fields() == original.fields() {
        return batch.with_schema(Arc::clone(original));
    }
    let n = batch.num_rows();
    let text = |f: &Field| matches!(f.data_type(), DataType::Utf8 | DataType::Utf8View);
    let columns = original
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| match c.data_type() {
            t if t == f.data_type() => Ok(Arc::clone(c)),
            DataType::Null => Ok(new_null_array(f.data_type(), n)),
            DataType::FixedSizeBinary(UUID_BYTES) if text(f) => {
                let t = uuid_text(c.as_fixed_size_binary());
                Ok(Arc::new(StringViewArray::from(t.as_string::<i32>())) as ArrayRef)
            }
            DataType::Dictionary(..) if text(f) => arrow::compute::cast(c, &DataType::Utf8View),
            // string views written as `Utf8`
            DataType::Utf8 if f.data_type() == &DataType::Utf8View => Ok(Arc::new(StringViewArray::from(c.as_string::<i32>())) as ArrayRef),
            DataType::Dictionary(..) => arrow::compute::cast(c, f.data_type()),
            t => Err(ArrowError::SchemaError(format!("spilled column `{}` is {t}, not an encoding of {}", f.name(), f.data_type()))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let fields: Vec<Arc<Field>> = original
        .fields()
        .iter()
        .zip(&columns)
        .map(|(f, c)| {
            if c.data_type() == f.data_type() {
                Arc::clone(f)
            } else {
                Arc::new(f.as_ref().clone().with_data_type(c.data_type().clone()))
            }
        })
        .collect();
    let schema = Arc::new(Schema::new(fields).with_metadata(original.metadata().clone()));
    RecordBatch::try_new_with_options(schema, columns, &RecordBatchOptions::new().with_row_count(Some(n)))
}

/// 16-byte values as canonical lowercase UUID text.
fn uuid_text(a: &FixedSizeBinaryArray) -> ArrayRef {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = StringBuilder::with_capacity(a.len(), a.len() * 36);
    let mut text = [0u8; 36];
    for v in a.iter() {
        let Some(v) = v else {
            b.append_null();
            continue;
        };
        let mut at = 0;
        for (i, byte) in v.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                text[at] = b'-';
                at += 1;
            }
            text[at] = HEX[(byte >> 4) as usize];
            text[at + 1] = HEX[(byte & 15) as usize];
            at += 2;
        }
        b.append_value(std::str::from_utf8(&text).expect("hex digits and dashes"));
    }
    Arc::new(b.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Decimal128Array, Int64Array, TimestampMicrosecondArray};
    use proptest::prelude::*;

    fn uuid(x: u128) -> String {
        let h = format!("{x:032x}");
        format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
    }

    fn batch(ids: Vec<Option<String>>, labels: Vec<Option<String>>, amounts: Vec<Option<i64>>) -> RecordBatch {
        let n = ids.len();
        let schema = Schema::new(vec![
            Field::new("event_id", DataType::Utf8, true),
            Field::new("dimensions.region", DataType::Utf8, true),
            Field::new("attributes.n", DataType::Int64, true),
            Field::new("ingested_at", DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())), true),
            Field::new("attributes.d", DataType::Decimal128(18, 3), true),
        ])
        .with_metadata(std::collections::HashMap::from([("billrun.source_file".to_string(), "f.parquet".to_string())]));
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(StringArray::from(labels)),
                Arc::new(Int64Array::from(amounts)),
                Arc::new(TimestampMicrosecondArray::from(vec![None; n]).with_timezone("UTC")),
                Arc::new(Decimal128Array::from(vec![Some(1500); n]).with_precision_and_scale(18, 3).unwrap()),
            ],
        )
        .unwrap()
    }

    #[test]
    fn uuids_take_16_bytes_labels_one_and_empty_columns_none() {
        let b = batch(
            vec![Some(uuid(1)), None, Some(uuid(u128::MAX))],
            vec![Some("eu".into()), Some("us".into()), None],
            vec![Some(1), None, Some(3)],
        );
        let n = narrow(&b).unwrap();
        let types: Vec<DataType> = n.schema().fields().iter().map(|f| f.data_type().clone()).collect();
        assert_eq!(types[0], DataType::FixedSizeBinary(16));
        assert_eq!(types[1], DataType::Dictionary(Box::new(DataType::UInt8), Box::new(DataType::Utf8)));
        assert_eq!(types[2], DataType::Int64);
        assert_eq!(types[3], DataType::Null);
        // for the frame: the encoded text columns as string views, the rest as it was
        let v = widen(n, &b.schema()).unwrap();
        let types: Vec<DataType> = v.schema().fields().iter().map(|f| f.data_type().clone()).collect();
        assert_eq!(types[..3], [DataType::Utf8View, DataType::Utf8View, DataType::Int64]);
        assert_eq!(as_original(v, &b.schema()), b);
    }

    /// A batch cast column by column to the original schema.
    fn as_original(b: RecordBatch, original: &SchemaRef) -> RecordBatch {
        let columns = b.columns().iter().zip(original.fields()).map(|(c, f)| arrow::compute::cast(c, f.data_type()).unwrap()).collect();
        RecordBatch::try_new(Arc::clone(original), columns).unwrap()
    }

    /// `b` with its `Utf8` columns as string views.
    fn as_views(b: &RecordBatch) -> RecordBatch {
        let fields: Vec<Field> = b
            .schema()
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Utf8 => f.as_ref().clone().with_data_type(DataType::Utf8View),
                _ => f.as_ref().clone(),
            })
            .collect();
        let schema = Arc::new(Schema::new(fields).with_metadata(b.schema().metadata().clone()));
        as_original(b.clone(), &schema)
    }

    #[test]
    fn text_that_is_not_a_canonical_uuid_or_has_many_values_stays_text() {
        // one upper-case UUID keeps the column as text: its spelling must come back as it was
        let ids = vec![Some(uuid(7)), Some(uuid(8).to_uppercase()), Some(String::new())];
        let b = batch(ids.clone(), vec![None, None, Some("x".into())], vec![None; 3]);
        let n = narrow(&b).unwrap();
        assert_ne!(n.schema().field(0).data_type(), &DataType::FixedSizeBinary(16));
        assert_eq!(as_original(widen(n, &b.schema()).unwrap(), &b.schema()), b);
        let many: Vec<Option<String>> = (0..300).map(|i| Some(format!("label-{i}"))).collect();
        let b = batch(many.clone(), many, vec![Some(1); 300]);
        let n = narrow(&b).unwrap();
        assert_eq!(n.schema().field(1).data_type(), &DataType::Utf8);
        assert_eq!(as_original(widen(n, &b.schema()).unwrap(), &b.schema()), b);
        // string views are spilled as `Utf8` and come back as views
        let v = as_views(&b);
        let n = narrow(&v).unwrap();
        assert_eq!(n.schema().field(1).data_type(), &DataType::Utf8);
        let w = widen(n, &v.schema()).unwrap();
        assert_eq!(w.schema().field(1).data_type(), &DataType::Utf8View);
        assert_eq!(w, v);
    }

    proptest! {
        #[test]
        fn widen_gives_back_what_narrow_took(
            ids in prop::collection::vec(prop::option::of(prop_oneof![any::<u128>().prop_map(uuid), "[a-f0-9-]{0,40}"]), 1..40),
            labels in prop::collection::vec(prop::option::of("[a-c]{0,2}"), 1..40),
            start in 0usize..5,
        ) {
            let n = ids.len().min(labels.len());
            let amounts: Vec<Option<i64>> = (0..n as i64).map(|i| (i % 3 != 0).then_some(i)).collect();
            let b = batch(ids[..n].to_vec(), labels[..n].to_vec(), amounts);
            // slices too: a bucket's rows are taken from a larger batch
            let b = b.slice(start.min(n - 1), n - start.min(n - 1));
            let narrowed = narrow(&b).unwrap();
            prop_assert_eq!(as_original(widen(narrowed, &b.schema()).unwrap(), &b.schema()), b.clone());
            // and with its text as string views, as the Parquet reader gives it
            let v = as_views(&b);
            let narrowed = narrow(&v).unwrap();
            prop_assert_eq!(as_original(widen(narrowed, &v.schema()).unwrap(), &v.schema()), v);
        }
    }
}
