//! Appending trips to a PostgreSQL table: created from the Arrow schema when missing,
//! filled with `COPY … FROM STDIN`, one transaction per month (a failed month leaves no
//! rows behind).

use arrow::csv::WriterBuilder;
use arrow::datatypes::{DataType, Schema};
use sqlx::PgPool;

use crate::Error;
use crate::frame::Trips;

/// Accepts `table` or `schema.table` of plain identifiers.
pub(crate) fn check_table_name(table: &str) -> Result<(), Error> {
    let plain = |part: &str| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && part.len() <= 63
    };
    let parts: Vec<&str> = table.split('.').collect();
    if parts.len() > 2 || !parts.iter().all(|p| plain(p)) {
        return Err(format!(
            "--table {table:?}: give a table name of letters, digits and _ (optionally schema.table)"
        )
        .into());
    }
    Ok(())
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

fn quoted_table(table: &str) -> String {
    table.split('.').map(quote).collect::<Vec<_>>().join(".")
}

fn column_type(data_type: &DataType) -> &'static str {
    match data_type {
        DataType::Boolean => "boolean",
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint",
        DataType::Int32 | DataType::UInt16 => "integer",
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => "bigint",
        DataType::Float16 | DataType::Float32 => "real",
        DataType::Float64 => "double precision",
        DataType::Date32 | DataType::Date64 => "date",
        DataType::Timestamp(_, None) => "timestamp",
        DataType::Timestamp(_, Some(_)) => "timestamptz",
        _ => "text",
    }
}

/// The `create table if not exists` statement for the schema.
pub(crate) fn create_table(table: &str, schema: &Schema) -> String {
    let columns: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", quote(f.name()), column_type(f.data_type())))
        .collect();
    format!(
        "create table if not exists {} ({})",
        quoted_table(table),
        columns.join(", ")
    )
}

/// Appends every row in one transaction; returns how many were written.
pub(crate) async fn append(pool: &PgPool, table: &str, trips: &Trips) -> Result<u64, Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(&create_table(table, &trips.schema))
        .execute(&mut *tx)
        .await
        .map_err(|e| format!("creating {table}: {e}"))?;
    let columns: Vec<String> = trips
        .schema
        .fields()
        .iter()
        .map(|f| quote(f.name()))
        .collect();
    let statement = format!(
        "copy {} ({}) from stdin with (format csv)",
        quoted_table(table),
        columns.join(", ")
    );
    let mut copy = tx
        .copy_in_raw(&statement)
        .await
        .map_err(|e| format!("appending to {table}: {e}"))?;
    for batch in &trips.batches {
        let mut csv = Vec::new();
        {
            let mut writer = WriterBuilder::new().with_header(false).build(&mut csv);
            writer.write(batch)?;
        }
        copy.send(csv).await?;
    }
    let rows = copy
        .finish()
        .await
        .map_err(|e| format!("appending to {table} (do its columns match the file's?): {e}"))?;
    tx.commit().await?;
    Ok(rows)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use arrow::datatypes::{Field, TimeUnit};

    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        for good in ["rides", "_t1", "staging.rides"] {
            assert!(check_table_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1rides",
            "rides; drop table x",
            "a.b.c",
            "ri\"des",
            "a.",
            &"x".repeat(64),
        ] {
            assert!(check_table_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn columns_take_postgres_types() {
        let schema = Schema::new(vec![
            Field::new("VendorID", DataType::Int64, true),
            Field::new(
                "tpep_pickup_datetime",
                DataType::Timestamp(TimeUnit::Second, None),
                true,
            ),
            Field::new("fare_amount", DataType::Float64, true),
            Field::new("store_and_fwd_flag", DataType::Utf8, true),
        ]);
        assert_eq!(
            create_table("staging.rides", &schema),
            r#"create table if not exists "staging"."rides" ("VendorID" bigint, "tpep_pickup_datetime" timestamp, "fare_amount" double precision, "store_and_fwd_flag" text)"#
        );
    }
}
