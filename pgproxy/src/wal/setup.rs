//! What the capture needs on the server before it can stream, checked and created: logical
//! `wal_level`, the publication (created before the slot, so the slot never decodes a change
//! from before the publication existed), and a pgoutput slot in this database. Each missing
//! piece tandem cannot create is a [`WalError`] with the fix. Also the slot's removal.

use tandem_control::Side;

use super::connection::{quote_identifier, quote_literal, Connection};
use super::error::WalError;
use super::lsn::Lsn;

/// Which tables a publication tandem creates holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishedTables {
    /// `FOR ALL TABLES` (needs a superuser), including tables created later.
    All,
    /// `FOR TABLE` these, each `table` or `schema.table` (unquoted, as stored in the catalog).
    Only(Vec<String>),
}

/// Checks a slot name: PostgreSQL allows lower-case letters, digits and underscores, at most
/// 63 of them.
pub(crate) fn check_slot_name(slot: &str) -> Result<(), WalError> {
    let valid = !slot.is_empty()
        && slot.len() <= 63
        && slot
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_');
    if valid {
        Ok(())
    } else {
        Err(WalError::InvalidName {
            what: "slot",
            name: slot.to_owned(),
            reason: "use 1 to 63 lower-case letters, digits and underscores",
        })
    }
}

/// Checks a publication name: not empty, at most 63 bytes, no NUL.
pub(crate) fn check_publication_name(publication: &str) -> Result<(), WalError> {
    if publication.is_empty() || publication.len() > 63 || publication.contains('\0') {
        return Err(WalError::InvalidName {
            what: "publication",
            name: publication.to_owned(),
            reason: "use 1 to 63 bytes, none of them NUL",
        });
    }
    Ok(())
}

/// `table` or `schema.table`, quoted for SQL.
fn quote_table(table: &str) -> Result<String, WalError> {
    let invalid = |reason| WalError::InvalidName {
        what: "table",
        name: table.to_owned(),
        reason,
    };
    if table.contains('\0') {
        return Err(invalid("a NUL byte"));
    }
    let parts: Vec<&str> = table.split('.').collect();
    if parts.len() > 2 || parts.iter().any(|part| part.is_empty()) {
        return Err(invalid("give `table` or `schema.table`"));
    }
    Ok(parts
        .iter()
        .map(|part| quote_identifier(part))
        .collect::<Vec<_>>()
        .join("."))
}

/// Refuses a server without `wal_level = logical`.
pub(crate) async fn check_wal_level(connection: &mut Connection) -> Result<(), WalError> {
    let rows = connection.query("SHOW wal_level", "SHOW wal_level").await?;
    let actual = rows
        .first()
        .and_then(|row| row.first().cloned().flatten())
        .unwrap_or_default();
    if actual == "logical" {
        Ok(())
    } else {
        Err(WalError::WalLevel {
            side: connection.side,
            actual,
        })
    }
}

/// Refuses a side whose user could not create the capture's publication when it is missing:
/// `FOR ALL TABLES` takes a superuser, a publication of tables `CREATE` on the database
/// (checked at start rather than when the stage first mirrors writes).
pub(crate) async fn check_publication_rights(
    connection: &mut Connection,
    publication: &str,
    tables: &PublishedTables,
) -> Result<(), WalError> {
    let rows = connection
        .query(
            &format!(
                "SELECT current_user::text, \
                 EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {})::text, \
                 (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)::text, \
                 has_database_privilege(current_database(), 'CREATE')::text",
                quote_literal(publication)
            ),
            "the publication rights look-up",
        )
        .await?;
    let row = rows.into_iter().next().unwrap_or_default();
    let field = |index: usize| row.get(index).cloned().flatten().unwrap_or_default();
    if field(1) == "true" {
        return Ok(());
    }
    let why = match tables {
        PublishedTables::All if field(2) != "true" => "FOR ALL TABLES takes a superuser",
        PublishedTables::Only(_) if field(3) != "true" => "it lacks CREATE on the database",
        _ => return Ok(()),
    };
    let what = match tables {
        PublishedTables::All => "ALL TABLES".to_owned(),
        PublishedTables::Only(tables) => format!("TABLE {}", tables.join(", ")),
    };
    Err(WalError::PublicationRights {
        side: connection.side,
        user: field(0),
        publication: publication.to_owned(),
        why,
        sql: format!(
            "CREATE PUBLICATION {} FOR {what};",
            quote_identifier(publication)
        ),
    })
}

/// Refuses a side whose every replication slot is taken when `slot` is not one of them: the
/// capture could not make it (checked at start, before anyone is served, rather than when the
/// stage first mirrors writes).
pub(crate) async fn check_free_slot(
    connection: &mut Connection,
    slot: &str,
) -> Result<(), WalError> {
    let rows = connection
        .query(
            &format!(
                "SELECT (count(*) >= current_setting('max_replication_slots')::int \
                   AND NOT coalesce(bool_or(slot_name = {}), false))::text \
                 FROM pg_catalog.pg_replication_slots",
                quote_literal(slot)
            ),
            "the replication slots look-up",
        )
        .await?;
    let exhausted = rows
        .first()
        .and_then(|row| row.first().cloned().flatten())
        .is_some_and(|exhausted| exhausted == "true");
    if exhausted {
        Err(WalError::SlotsExhausted {
            side: connection.side,
        })
    } else {
        Ok(())
    }
}

/// The comment a publication tandem created carries: `tandem pg-mirror drop` drops only
/// publications that carry it (one the user made is used and left alone).
const OWNED_PUBLICATION: &str = "created by tandem pg-proxy; tandem pg-mirror drop drops it";

/// Creates the publication when it does not exist, marked as tandem's (one that does is used
/// as it is).
pub(crate) async fn ensure_publication(
    connection: &mut Connection,
    publication: &str,
    tables: &PublishedTables,
) -> Result<(), WalError> {
    let exists = connection
        .query(
            &format!(
                "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {}",
                quote_literal(publication)
            ),
            "the publication look-up",
        )
        .await?;
    if !exists.is_empty() {
        return Ok(());
    }
    let what = match tables {
        PublishedTables::All => "ALL TABLES".to_owned(),
        PublishedTables::Only(tables) => format!(
            "TABLE {}",
            tables
                .iter()
                .map(|table| quote_table(table))
                .collect::<Result<Vec<_>, _>>()?
                .join(", ")
        ),
    };
    // One simple query, so one implicit transaction: a publication tandem made is never left
    // unmarked.
    let sql = format!(
        "CREATE PUBLICATION {name} FOR {what}; COMMENT ON PUBLICATION {name} IS {}",
        quote_literal(OWNED_PUBLICATION),
        name = quote_identifier(publication),
    );
    match connection.query(&sql, "CREATE PUBLICATION").await {
        // Another tandem created it meanwhile (and marked it).
        Err(WalError::Server { code, .. }) if code == "42710" => Ok(()),
        other => other.map(drop),
    }
}

/// What [`drop_publication`] found of a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicationDropped {
    /// It was tandem's, and is gone.
    Dropped,
    /// There was none of that name.
    Absent,
    /// It was not created by tandem: left as it is.
    NotTandems,
}

/// Drops `publication` on `side` if tandem created it (its comment says so), once the
/// migration is over.
///
/// # Errors
/// A [`WalError`] when the server is unreachable or refuses.
pub async fn drop_publication(
    side: Side,
    url: &str,
    publication: &str,
) -> Result<PublicationDropped, WalError> {
    let mut connection = Connection::open(side, url).await?;
    let found = connection
        .query(
            &format!(
                "SELECT coalesce(obj_description(oid, 'pg_publication'), '') FROM \
                 pg_catalog.pg_publication WHERE pubname = {}",
                quote_literal(publication)
            ),
            "the publication look-up",
        )
        .await?;
    let outcome = match found.first() {
        None => PublicationDropped::Absent,
        Some(row) if row.first().cloned().flatten().as_deref() == Some(OWNED_PUBLICATION) => {
            connection
                .query(
                    &format!(
                        "DROP PUBLICATION IF EXISTS {}",
                        quote_identifier(publication)
                    ),
                    "DROP PUBLICATION",
                )
                .await?;
            PublicationDropped::Dropped
        }
        Some(_) => PublicationDropped::NotTandems,
    };
    connection.terminate().await?;
    Ok(outcome)
}

/// Refuses tables the capture cannot follow: published for updates and deletes but without a
/// replica identity (no primary key, `REPLICA IDENTITY DEFAULT` or `NOTHING`): PostgreSQL
/// itself refuses every UPDATE and DELETE of such a table once a publication holds it, so
/// the application would fail. Checks the publication's tables when it exists, otherwise
/// those `tables` names.
pub(crate) async fn check_identities(
    connection: &mut Connection,
    publication: &str,
    tables: &PublishedTables,
) -> Result<(), WalError> {
    let exists = !connection
        .query(
            &format!(
                "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {}",
                quote_literal(publication)
            ),
            "the publication look-up",
        )
        .await?
        .is_empty();
    let scope = if exists {
        format!(
            "c.oid IN (SELECT (quote_ident(schemaname) || '.' || quote_ident(tablename))::regclass \
             FROM pg_catalog.pg_publication_tables WHERE pubname = {}) AND EXISTS \
             (SELECT 1 FROM pg_catalog.pg_publication p WHERE p.pubname = {} \
             AND (p.pubupdate OR p.pubdelete))",
            quote_literal(publication),
            quote_literal(publication)
        )
    } else {
        match tables {
            PublishedTables::All => "n.nspname NOT IN ('pg_catalog', 'information_schema') \
                 AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'"
                .to_owned(),
            PublishedTables::Only(names) => {
                let quoted = names
                    .iter()
                    .map(|name| quote_table(name).map(|table| quote_literal(&table)))
                    .collect::<Result<Vec<_>, _>>()?;
                format!(
                    "c.oid IN (SELECT to_regclass(name) FROM unnest(ARRAY[{}]::text[]) AS name)",
                    quoted.join(", ")
                )
            }
        }
    };
    let rows = connection
        .query(
            &format!(
                "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {scope} \
                 AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS \
                 (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))) \
                 ORDER BY 1"
            ),
            "the replica identity look-up",
        )
        .await?;
    let keyless: Vec<String> = rows
        .into_iter()
        .filter_map(|row| row.into_iter().next().flatten())
        .collect();
    if keyless.is_empty() {
        Ok(())
    } else {
        Err(WalError::NoIdentity {
            side: connection.side,
            tables: keyless,
        })
    }
}

/// How often a slot another connection is still creating is looked at again.
const SLOT_BEING_MADE_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Creates the slot when it does not exist and checks one that does; returns the position it
/// confirmed last (where a stream from it begins). A slot another connection (another
/// tandem) is still creating has no confirmed position until its consistent point: it is
/// waited for, so that no caller takes a slot that does not yet keep every commit for ready.
pub(crate) async fn ensure_slot(connection: &mut Connection, slot: &str) -> Result<Lsn, WalError> {
    let side = connection.side;
    let rows = loop {
        let rows = connection
            .query(
                &format!(
                    "SELECT coalesce(plugin, '(physical)'), coalesce(database, ''), \
                     coalesce(confirmed_flush_lsn::text, ''), current_database() \
                     FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
                    quote_literal(slot)
                ),
                "the replication slot look-up",
            )
            .await?;
        let being_made = rows.first().is_some_and(|row| {
            row.get(2).cloned().flatten().unwrap_or_default().is_empty()
                && row.first().cloned().flatten().as_deref() == Some("pgoutput")
        });
        if !being_made {
            break rows;
        }
        tokio::time::sleep(SLOT_BEING_MADE_POLL).await;
    };
    if let Some(row) = rows.first() {
        let field = |index: usize| row.get(index).cloned().flatten().unwrap_or_default();
        let (plugin, database, confirmed, current) = (field(0), field(1), field(2), field(3));
        let confirmed = if confirmed.is_empty() {
            "0/0".to_owned()
        } else {
            confirmed
        };
        if plugin != "pgoutput" {
            return Err(WalError::SlotPlugin {
                side,
                slot: slot.to_owned(),
                plugin,
            });
        }
        if database != current {
            return Err(WalError::SlotInOtherDatabase {
                side,
                slot: slot.to_owned(),
                database,
            });
        }
        return confirmed.parse().map_err(|err| WalError::Protocol {
            side,
            reason: format!("the slot's confirmed position: {err}"),
        });
    }
    let created = connection
        .query(
            &format!("CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput NOEXPORT_SNAPSHOT"),
            "CREATE_REPLICATION_SLOT",
        )
        .await;
    match created {
        Ok(rows) => rows
            .first()
            .and_then(|row| row.get(1).cloned().flatten())
            .unwrap_or_default()
            .parse()
            .map_err(|err| WalError::Protocol {
                side,
                reason: format!("the new slot's consistent point: {err}"),
            }),
        Err(WalError::Server { code, .. }) if code == "53400" => {
            Err(WalError::SlotsExhausted { side })
        }
        Err(WalError::Server { code, .. }) if code == "55000" => {
            // Only a wal_level below logical stops a logical slot with this code.
            Err(WalError::WalLevel {
                side,
                actual: "below logical".to_owned(),
            })
        }
        // Another tandem created it meanwhile: check it as any existing one.
        Err(WalError::Server { code, .. }) if code == "42710" => {
            Box::pin(ensure_slot(connection, slot)).await
        }
        Err(other) => Err(other),
    }
}

/// Drops the replication slot `slot` of the server at `url`, waiting until no connection
/// reads it (a stream that was just dropped lets go of it within moments; one still open
/// holds it: bound the wait with a timeout). Returns whether there was one. This frees the
/// write-ahead log it kept; a database with a logical slot cannot be dropped.
///
/// # Errors
/// A [`WalError`] when the server is unreachable or refuses.
pub async fn drop_slot(side: Side, url: &str, slot: &str) -> Result<bool, WalError> {
    check_slot_name(slot)?;
    let mut connection = Connection::open(side, url).await?;
    let exists = connection
        .query(
            &format!(
                "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
                quote_literal(slot)
            ),
            "the replication slot look-up",
        )
        .await?;
    let dropped = if exists.is_empty() {
        false
    } else {
        match connection
            .query(
                &format!("DROP_REPLICATION_SLOT {slot} WAIT"),
                "DROP_REPLICATION_SLOT",
            )
            .await
        {
            Ok(_) => true,
            Err(WalError::Server { code, .. }) if code == "42704" => false,
            Err(other) => return Err(other),
        }
    };
    connection.terminate().await?;
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_publication_and_table_names_are_checked_and_quoted() {
        assert!(check_slot_name("tandem_capture_1").is_ok());
        for bad in ["", "Upper", "with space", "dash-ed", &"x".repeat(64)] {
            assert!(check_slot_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_publication_name("Any \"name\"").is_ok());
        assert!(check_publication_name("").is_err());
        assert!(check_publication_name("a\0b").is_err());
        assert_eq!(quote_table("items").unwrap(), "\"items\"");
        assert_eq!(
            quote_table("Shop.order \"lines\"").unwrap(),
            "\"Shop\".\"order \"\"lines\"\"\""
        );
        for bad in ["a.b.c", ".a", "a.", "", "a\0"] {
            assert!(quote_table(bad).is_err(), "{bad:?}");
        }
    }
}
