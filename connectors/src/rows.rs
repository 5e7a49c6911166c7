//! Row-at-a-time assembly of canonical batches (used by the text formats).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::schema::{self, UTC};

/// Most rows in one batch produced by the NDJSON and CSV readers.
pub const MAX_BATCH_ROWS: usize = 65_536;

/// One canonical event, attributes and dimensions as text.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Row {
    pub event_id: Option<String>,
    pub schema_name: Option<String>,
    pub account_id: Option<String>,
    pub timestamp: Option<i64>,
    pub ingested_at: Option<i64>,
    /// (attribute name, decimal text); names unique within a row.
    pub attributes: Vec<(String, String)>,
    /// (dimension name, value); names unique within a row.
    pub dimensions: Vec<(String, String)>,
}

/// Collects rows and cuts them into batches of at most [`MAX_BATCH_ROWS`].
pub(crate) struct RowBatcher {
    rows: Vec<Row>,
    declared_attributes: BTreeSet<String>,
    declared_dimensions: BTreeSet<String>,
    metadata: HashMap<String, String>,
    batches: Vec<RecordBatch>,
}

impl RowBatcher {
    /// `declared_*` columns appear in every batch even when all-null.
    pub fn new(
        source_file: &str,
        declared_attributes: impl IntoIterator<Item = String>,
        declared_dimensions: impl IntoIterator<Item = String>,
    ) -> Self {
        let metadata = HashMap::from([(schema::SOURCE_FILE_METADATA_KEY.to_string(), source_file.to_string())]);
        Self {
            rows: Vec::new(),
            declared_attributes: declared_attributes.into_iter().collect(),
            declared_dimensions: declared_dimensions.into_iter().collect(),
            metadata,
            batches: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Row) -> Result<(), ArrowError> {
        self.rows.push(row);
        if self.rows.len() >= MAX_BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<Vec<RecordBatch>, ArrowError> {
        self.flush()?;
        Ok(self.batches)
    }

    fn flush(&mut self) -> Result<(), ArrowError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
        let batch = build_batch(&rows, &self.declared_attributes, &self.declared_dimensions, &self.metadata)?;
        self.batches.push(batch);
        Ok(())
    }
}

fn text_columns<'a>(
    rows: &'a [Row],
    declared: &BTreeSet<String>,
    pick: impl Fn(&'a Row) -> &'a [(String, String)],
) -> BTreeMap<String, Vec<Option<&'a str>>> {
    let n = rows.len();
    let mut cols: BTreeMap<String, Vec<Option<&'a str>>> = declared.iter().map(|name| (name.clone(), vec![None; n])).collect();
    for (i, row) in rows.iter().enumerate() {
        for (k, v) in pick(row) {
            match cols.get_mut(k.as_str()) {
                Some(col) => col[i] = Some(v.as_str()),
                None => {
                    let mut col = vec![None; n];
                    col[i] = Some(v.as_str());
                    cols.insert(k.clone(), col);
                }
            }
        }
    }
    cols
}

pub(crate) fn build_batch(
    rows: &[Row],
    declared_attributes: &BTreeSet<String>,
    declared_dimensions: &BTreeSet<String>,
    metadata: &HashMap<String, String>,
) -> Result<RecordBatch, ArrowError> {
    let mut fields = schema::core_fields();
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.event_id.as_deref()))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.schema_name.as_deref()))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.account_id.as_deref()))),
        Arc::new(TimestampMicrosecondArray::from_iter(rows.iter().map(|r| r.timestamp)).with_timezone(UTC)),
        Arc::new(TimestampMicrosecondArray::from_iter(rows.iter().map(|r| r.ingested_at)).with_timezone(UTC)),
    ];
    for (name, values) in text_columns(rows, declared_attributes, |r| &r.attributes) {
        fields.push(Field::new(schema::attribute_column(&name), DataType::Utf8, true));
        columns.push(Arc::new(StringArray::from(values)));
    }
    for (name, values) in text_columns(rows, declared_dimensions, |r| &r.dimensions) {
        fields.push(Field::new(schema::dimension_column(&name), DataType::Utf8, true));
        columns.push(Arc::new(StringArray::from(values)));
    }
    let schema = Schema::new(fields).with_metadata(metadata.clone());
    RecordBatch::try_new(Arc::new(schema), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::TimestampMicrosecondType;

    #[test]
    fn union_of_columns_and_declared() {
        let rows = vec![
            Row { event_id: Some("e1".into()), timestamp: Some(5), attributes: vec![("b".into(), "1".into())], ..Row::default() },
            Row {
                event_id: None,
                timestamp: Some(6),
                attributes: vec![("a".into(), "2.5".into())],
                dimensions: vec![("region".into(), "eu".into())],
                ..Row::default()
            },
        ];
        let declared: BTreeSet<String> = ["z".to_string()].into();
        let b = build_batch(&rows, &declared, &BTreeSet::new(), &HashMap::new()).unwrap();
        schema::check_canonical(&b).unwrap();
        let names: Vec<_> = b.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(
            names,
            [
                "event_id",
                "schema_name",
                "account_id",
                "timestamp",
                "ingested_at",
                "attributes.a",
                "attributes.b",
                "attributes.z",
                "dimensions.region"
            ]
        );
        let a = b.column(5).as_string::<i32>();
        assert!(a.is_null(0));
        assert_eq!(a.value(1), "2.5");
        assert_eq!(b.column(7).null_count(), 2);
        assert!(b.column(0).is_null(1));
        let ts = b.column(3).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(ts.values().to_vec(), vec![5, 6]);
    }

    #[test]
    fn batcher_splits_at_max_rows() {
        let mut batcher = RowBatcher::new("f.ndjson", [], []);
        for i in 0..(MAX_BATCH_ROWS + 3) {
            batcher.push(Row { timestamp: Some(i as i64), ..Row::default() }).unwrap();
        }
        let batches = batcher.finish().unwrap();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].num_rows(), MAX_BATCH_ROWS);
        assert_eq!(batches[1].num_rows(), 3);
        assert_eq!(batches[1].schema().metadata().get(schema::SOURCE_FILE_METADATA_KEY).map(String::as_str), Some("f.ndjson"));
    }
}
