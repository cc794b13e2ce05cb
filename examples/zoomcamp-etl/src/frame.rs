//! Trips as Arrow record batches: read from CSV(.gz) or Parquet, cleaned, written as
//! Parquet.

use std::io::{Cursor, Read as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, RecordBatchReader as _,
};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::csv::ReaderBuilder;
use arrow::csv::reader::Format;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, GzipLevel};
use parquet::file::properties::WriterProperties;

use crate::Error;

const BATCH_ROWS: usize = 64 * 1024;
const FETCH_ATTEMPTS: u32 = 3;

/// A table of trips.
#[derive(Debug)]
pub(crate) struct Trips {
    pub(crate) schema: SchemaRef,
    pub(crate) batches: Vec<RecordBatch>,
}

impl Trips {
    pub(crate) fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// What [`clean`] changed.
#[derive(Debug)]
pub(crate) struct Fixed {
    pub(crate) missing_passenger_count: usize,
    pub(crate) datetime_columns: usize,
}

/// The bytes at `source`: a URL (three attempts, as the course's `retries=3`) or a local
/// path; gzip is undone whatever the name says.
pub(crate) async fn fetch(source: &str) -> Result<Vec<u8>, Error> {
    let bytes = if source.starts_with("http://") || source.starts_with("https://") {
        download(source).await?
    } else {
        tokio::fs::read(source)
            .await
            .map_err(|e| format!("{source}: {e}"))?
    };
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut csv = Vec::with_capacity(bytes.len() * 5);
        flate2::read::MultiGzDecoder::new(bytes.as_slice())
            .read_to_end(&mut csv)
            .map_err(|e| format!("{source}: not valid gzip: {e}"))?;
        return Ok(csv);
    }
    Ok(bytes)
}

async fn download(url: &str) -> Result<Vec<u8>, Error> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let mut attempt = 1;
    loop {
        let result = async {
            let response = client.get(url).send().await?.error_for_status()?;
            response.bytes().await
        }
        .await;
        match result {
            Ok(bytes) => return Ok(bytes.to_vec()),
            Err(e)
                if attempt >= FETCH_ATTEMPTS || e.status().is_some_and(|s| s.is_client_error()) =>
            {
                return Err(format!("{url}: {e}").into());
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                attempt += 1;
            }
        }
    }
}

/// Reads CSV with a header. Column types are inferred from the first rows; when a later
/// row does not fit them (a count that turns fractional, a column empty at first), the
/// types are inferred again from every row, so a column with a few odd values is still
/// read whole.
pub(crate) fn read_csv(csv: &[u8]) -> Result<Trips, Error> {
    match read_csv_inferring(csv, Some(INFER_ROWS)) {
        Ok(trips) => Ok(trips),
        Err(Misfit::Schema(e)) => Err(e),
        Err(Misfit::Rows(_)) => read_csv_inferring(csv, None).map_err(|misfit| match misfit {
            Misfit::Schema(e) | Misfit::Rows(e) => e,
        }),
    }
}

/// Rows looked at before the types are fixed.
const INFER_ROWS: usize = 100_000;

/// Why a read failed: the columns themselves, or rows that do not fit the inferred types.
enum Misfit {
    Schema(Error),
    Rows(Error),
}

fn read_csv_inferring(csv: &[u8], rows: Option<usize>) -> Result<Trips, Misfit> {
    let format = Format::default().with_header(true);
    let (schema, _) = format
        .infer_schema(Cursor::new(csv), rows)
        .map_err(|e| Misfit::Schema(format!("the CSV's columns: {e}").into()))?;
    if schema.fields().is_empty() {
        return Err(Misfit::Schema("the CSV has no columns".into()));
    }
    let schema = Arc::new(schema);
    let reader = ReaderBuilder::new(schema.clone())
        .with_format(format)
        .with_batch_size(BATCH_ROWS)
        .build(Cursor::new(csv))
        .map_err(|e| Misfit::Schema(e.into()))?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Misfit::Rows(format!("reading the CSV: {e}").into()))?;
    Ok(Trips { schema, batches })
}

/// The course's cleaning: `*_datetime` text columns become timestamps, and missing
/// `passenger_count` values become 0.
pub(crate) fn clean(trips: &Trips) -> Result<(Trips, Fixed), Error> {
    let mut fixed = Fixed {
        missing_passenger_count: 0,
        datetime_columns: 0,
    };
    let mut fields: Vec<Field> = trips
        .schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let timestamp = DataType::Timestamp(TimeUnit::Second, None);
    for field in &mut fields {
        if field.name() == "passenger_count" && field.data_type() == &DataType::Null {
            // Missing in every row: a count all the same.
            *field = field.clone().with_data_type(DataType::Int64);
        }
        if !field.name().ends_with("_datetime") {
            continue;
        }
        if field.data_type() == &DataType::Utf8 {
            *field = field.clone().with_data_type(timestamp.clone());
        }
        if matches!(field.data_type(), DataType::Timestamp(..)) {
            fixed.datetime_columns += 1;
        }
    }
    let schema = Arc::new(Schema::new(fields));
    let mut batches = Vec::with_capacity(trips.batches.len());
    for batch in &trips.batches {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
        for (field, column) in schema.fields().iter().zip(batch.columns()) {
            let column = if field.name() == "passenger_count" {
                fixed.missing_passenger_count += column.logical_null_count();
                fill_zero(column).map_err(|e| format!("passenger_count: {e}"))?
            } else if column.data_type() == field.data_type() {
                column.clone()
            } else {
                // A value that is not a time is an error, never a silent null.
                let strict = CastOptions {
                    safe: false,
                    ..CastOptions::default()
                };
                cast_with_options(column, field.data_type(), &strict).map_err(|e| {
                    format!(
                        "{} holds a value that is not a date and time: {e}",
                        field.name()
                    )
                })?
            };
            columns.push(column);
        }
        batches.push(RecordBatch::try_new(schema.clone(), columns)?);
    }
    Ok((Trips { schema, batches }, fixed))
}

fn fill_zero(column: &ArrayRef) -> Result<ArrayRef, Error> {
    // Only missing values (read as Null): a column of zeros.
    if column.data_type() == &DataType::Null {
        return Ok(Arc::new(Int64Array::from(vec![0; column.len()])));
    }
    if column.logical_null_count() == 0 {
        return Ok(column.clone());
    }
    if let Some(ints) = column.as_any().downcast_ref::<Int64Array>() {
        return Ok(Arc::new(
            ints.iter()
                .map(|v| Some(v.unwrap_or(0)))
                .collect::<Int64Array>(),
        ));
    }
    if let Some(floats) = column.as_any().downcast_ref::<Float64Array>() {
        return Ok(Arc::new(
            floats
                .iter()
                .map(|v| Some(v.unwrap_or(0.0)))
                .collect::<Float64Array>(),
        ));
    }
    Err(format!("expected numbers, found {}", column.data_type()).into())
}

/// Writes the trips as gzip-compressed Parquet (as the course's `to_parquet(compression=
/// "gzip")`), creating the directory; returns the file's size.
pub(crate) fn write_parquet(trips: &Trips, path: &Path) -> Result<u64, Error> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Written beside the target and renamed over it: a failed write leaves no file.
    let mut builder = tempfile::Builder::new();
    // As File::create would: 0o666 less the umask, not tempfile's 0o600.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let file = builder
        .prefix(".parquet-")
        .tempfile_in(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::GZIP(GzipLevel::default()))
        .build();
    let mut writer = ArrowWriter::try_new(file, trips.schema.clone(), Some(properties))?;
    for batch in &trips.batches {
        writer.write(batch)?;
    }
    let file = writer.into_inner()?;
    file.as_file().sync_all()?;
    file.persist(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(std::fs::metadata(path)?.len())
}

/// Reads a Parquet file.
pub(crate) fn read_parquet(path: &Path) -> Result<Trips, Error> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?
        .with_batch_size(BATCH_ROWS)
        .build()?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    Ok(Trips { schema, batches })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use arrow::array::{Array as _, AsArray as _};
    use arrow::datatypes::{Float64Type, Int64Type};

    use super::*;

    #[test]
    fn header_only_csv_is_an_empty_table_and_an_empty_file_is_refused() {
        let trips = read_csv(b"VendorID,passenger_count\n").unwrap();
        assert_eq!(trips.rows(), 0);
        let (cleaned, fixed) = clean(&trips).unwrap();
        assert_eq!((cleaned.rows(), fixed.missing_passenger_count), (0, 0));
        assert!(
            read_csv(b"")
                .unwrap_err()
                .to_string()
                .contains("no columns")
        );
    }

    #[test]
    fn a_passenger_count_missing_everywhere_becomes_zeros() {
        let trips = read_csv(b"passenger_count,x\n,a\n,b\n").unwrap();
        assert_eq!(trips.schema.field(0).data_type(), &DataType::Null);
        let (cleaned, fixed) = clean(&trips).unwrap();
        assert_eq!(fixed.missing_passenger_count, 2);
        assert_eq!(cleaned.schema.field(0).data_type(), &DataType::Int64);
        let column = cleaned.batches[0].column(0).as_primitive::<Int64Type>();
        assert_eq!(column.values().to_vec(), [0, 0]);
    }

    #[test]
    fn a_bad_time_is_an_error_not_a_null() {
        let trips =
            read_csv(b"tpep_pickup_datetime,x\n2021-01-01 00:30:10,a\nyesterday,b\n").unwrap();
        let error = clean(&trips).unwrap_err().to_string();
        assert!(error.contains("tpep_pickup_datetime"), "{error}");
    }

    #[test]
    fn missing_passenger_counts_become_zero_in_either_number_type() {
        let ints = read_csv(b"passenger_count,x\n1,a\n,b\n3,c\n").unwrap();
        let (ints, fixed) = clean(&ints).unwrap();
        assert_eq!(fixed.missing_passenger_count, 1);
        let column = ints.batches[0].column(0).as_primitive::<Int64Type>();
        assert_eq!(column.null_count(), 0);
        assert_eq!(column.values().to_vec(), [1, 0, 3]);

        let floats = read_csv(b"passenger_count,x\n1.0,a\n,b\n2.5,c\n").unwrap();
        let (floats, fixed) = clean(&floats).unwrap();
        assert_eq!(fixed.missing_passenger_count, 1);
        let column = floats.batches[0].column(0).as_primitive::<Float64Type>();
        assert_eq!(column.values().to_vec(), [1.0, 0.0, 2.5]);
    }

    #[test]
    fn a_late_row_that_does_not_fit_the_first_rows_types_is_still_read() {
        let mut csv = String::from("passenger_count,note\n");
        for _ in 0..INFER_ROWS + 10 {
            csv.push_str("1,\n");
        }
        csv.push_str("2.5,late\n");
        let trips = read_csv(csv.as_bytes()).unwrap();
        assert_eq!(trips.rows(), INFER_ROWS + 11);
        assert_eq!(trips.schema.field(0).data_type(), &DataType::Float64);
        assert_eq!(trips.schema.field(1).data_type(), &DataType::Utf8);
    }

    #[test]
    fn a_table_without_passenger_count_passes_through() {
        let trips = read_csv(b"VendorID,fare\n1,2.5\n2,\n").unwrap();
        let (cleaned, fixed) = clean(&trips).unwrap();
        assert_eq!(fixed.missing_passenger_count, 0);
        assert_eq!(cleaned.batches[0].column(1).null_count(), 1);
    }

    #[test]
    fn datetime_columns_are_timestamps() {
        let trips = read_csv(
            b"tpep_pickup_datetime,lpep_dropoff_datetime,name\n2021-01-01 00:30:10,2021-01-01 00:36:12,x\n",
        )
        .unwrap();
        let (cleaned, fixed) = clean(&trips).unwrap();
        assert_eq!(fixed.datetime_columns, 2);
        for field in &cleaned.schema.fields()[..2] {
            assert!(
                matches!(field.data_type(), DataType::Timestamp(..)),
                "{field:?}"
            );
        }
        assert_eq!(cleaned.schema.field(2).data_type(), &DataType::Utf8);
    }

    #[test]
    fn text_where_a_count_belongs_is_refused() {
        let trips = read_csv(b"passenger_count,x\none,a\n,b\n").unwrap();
        let error = clean(&trips).unwrap_err().to_string();
        assert!(error.contains("passenger_count"), "{error}");
    }

    #[test]
    fn parquet_round_trip_keeps_rows_and_types() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/trips.parquet");
        let trips = read_csv(b"passenger_count,tpep_pickup_datetime,flag\n1,2021-01-01 00:00:00,\"a,\"\"b\"\n,2021-01-02 00:00:00,N\n")
            .unwrap();
        let (trips, _) = clean(&trips).unwrap();
        assert!(write_parquet(&trips, &path).unwrap() > 0);
        let back = read_parquet(&path).unwrap();
        assert_eq!(back.schema, trips.schema);
        assert_eq!(back.batches, trips.batches);
        // Only the target is left in the directory.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["trips.parquet"]);
    }
}
