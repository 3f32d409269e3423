//! The net effect of a batch's changes of one row, found by a key that stays the same: what
//! the other side must do to that row so that it ends as the changes in order leave it,
//! whatever it held before. Pure.
//!
//! The changes are applied there as today's row path does: an insert is an upsert on the key
//! (its columns set, a row already there keeps the columns the source does not have), an
//! update sets the columns it sent where the row exists and does nothing where it does not,
//! a delete removes the row where it exists. Composed:
//!
//! - insert, then updates: the insert of the final image; insert, then insert: the last;
//! - updates: one update of every column any of them sent, the later value winning (each
//!   does nothing when the row is absent, and none makes it exist);
//! - anything, then delete: a delete (an insert before it may have met a row that was there;
//!   the delete removes it either way);
//! - delete, then insert: a delete, then the insert (not an upsert of the image alone: a row
//!   that was there would keep the columns the source lacks);
//! - delete, then update: the delete (the update finds nothing).
//!
//! Property-tested against a model of the other side's table: applying the net effect ends
//! in the same rows as applying the changes, from any starting rows.

/// Every column's value of an inserted row, as text (`None` for NULL).
pub type Image = Vec<Option<String>>;

/// The columns an update sent: `None` for a TOASTed value it did not change (not sent),
/// `Some(None)` for NULL.
pub type Sent = Vec<Option<Option<String>>>;

/// One change of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowChange {
    /// An insert (an upsert on the other side).
    Insert(Image),
    /// An update of the columns it sent.
    Update(Sent),
    /// A delete.
    Delete,
}

/// What the other side must do to the row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Net {
    /// Upsert the image.
    Upsert(Image),
    /// Update the columns sent, where the row exists.
    Update(Sent),
    /// Delete the row. `expected`: the first change of the row was an update or a delete,
    /// so a row absent before the batch is one the other side lacked (counted as absent).
    Delete {
        /// Whether the row should have been there.
        expected: bool,
    },
    /// Delete the row, then insert the image.
    Replace {
        /// The image inserted.
        image: Image,
        /// As [`Net::Delete`]'s.
        expected: bool,
    },
}

impl Net {
    /// The net effect of `change` after `self`.
    #[must_use]
    pub fn then(self, change: RowChange) -> Net {
        match (self, change) {
            (Net::Upsert(image), RowChange::Update(sent)) => Net::Upsert(overlay(image, &sent)),
            (Net::Replace { image, expected }, RowChange::Update(sent)) => Net::Replace {
                image: overlay(image, &sent),
                expected,
            },
            (Net::Update(before), RowChange::Update(sent)) => Net::Update(
                before
                    .into_iter()
                    .zip(sent)
                    .map(|(before, now)| now.or(before))
                    .collect(),
            ),
            (deleted @ Net::Delete { .. }, RowChange::Update(_)) => deleted,
            (Net::Upsert(_) | Net::Update(_), RowChange::Insert(image)) => Net::Upsert(image),
            (
                Net::Delete { expected } | Net::Replace { expected, .. },
                RowChange::Insert(image),
            ) => Net::Replace { image, expected },
            (Net::Upsert(_), RowChange::Delete) => Net::Delete { expected: false },
            (Net::Update(_), RowChange::Delete) => Net::Delete { expected: true },
            (Net::Delete { expected } | Net::Replace { expected, .. }, RowChange::Delete) => {
                Net::Delete { expected }
            }
        }
    }

    /// The net effect of `change` alone.
    #[must_use]
    pub fn first(change: RowChange) -> Net {
        match change {
            RowChange::Insert(image) => Net::Upsert(image),
            RowChange::Update(sent) => Net::Update(sent),
            RowChange::Delete => Net::Delete { expected: true },
        }
    }
}

/// `image` with the columns `sent` set.
fn overlay(image: Image, sent: &Sent) -> Image {
    image
        .into_iter()
        .zip(sent)
        .map(|(was, now)| match now {
            Some(value) => value.clone(),
            None => was,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A row of the model: the source's two columns, and one only the other side has (its
    /// default when the row is inserted, kept by an upsert of a row that was there).
    type Row = (Image, String);

    /// The other side's table, by key, changed as the row path changes it.
    fn apply(table: &mut BTreeMap<u8, Row>, key: u8, change: &RowChange) {
        match change {
            RowChange::Insert(image) => {
                let extra = table
                    .get(&key)
                    .map_or_else(|| "default".to_owned(), |(_, extra)| extra.clone());
                table.insert(key, (image.clone(), extra));
            }
            RowChange::Update(sent) => {
                if let Some((image, _)) = table.get_mut(&key) {
                    *image = overlay(image.clone(), sent);
                }
            }
            RowChange::Delete => {
                table.remove(&key);
            }
        }
    }

    /// The net effect as the set path applies it.
    fn apply_net(table: &mut BTreeMap<u8, Row>, key: u8, net: &Net) {
        match net {
            Net::Upsert(image) => apply(table, key, &RowChange::Insert(image.clone())),
            Net::Update(sent) => apply(table, key, &RowChange::Update(sent.clone())),
            Net::Delete { .. } => apply(table, key, &RowChange::Delete),
            Net::Replace { image, .. } => {
                apply(table, key, &RowChange::Delete);
                apply(table, key, &RowChange::Insert(image.clone()));
            }
        }
    }

    fn value() -> impl Strategy<Value = Option<String>> {
        prop_oneof![Just(None), (0_u8..4).prop_map(|v| Some(v.to_string()))]
    }

    fn change() -> impl Strategy<Value = RowChange> {
        let sent = prop_oneof![1 => Just(None), 3 => value().prop_map(Some)];
        prop_oneof![
            2 => proptest::collection::vec(value(), 2).prop_map(RowChange::Insert),
            3 => proptest::collection::vec(sent, 2).prop_map(RowChange::Update),
            1 => Just(RowChange::Delete),
        ]
    }

    #[test]
    fn a_delete_then_an_insert_is_not_an_upsert() {
        let net = Net::first(RowChange::Delete).then(RowChange::Insert(vec![Some("1".into())]));
        assert_eq!(
            net,
            Net::Replace {
                image: vec![Some("1".into())],
                expected: true
            }
        );
        let net = Net::first(RowChange::Insert(vec![None])).then(RowChange::Delete);
        assert_eq!(net, Net::Delete { expected: false });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4_000))]
        /// Applying each key's net effect, keys in any order, ends in the rows applying the
        /// changes in order does, from any starting rows.
        #[test]
        fn the_net_effect_ends_in_the_same_rows(
            changes in proptest::collection::vec((0_u8..4, change()), 0..40),
            start in proptest::collection::btree_map(0_u8..4, (proptest::collection::vec(value(), 2), "[a-c]"), 0..4),
            reverse in any::<bool>(),
        ) {
            let mut by_change = start.clone();
            let mut nets: BTreeMap<u8, Net> = BTreeMap::new();
            for (key, change) in &changes {
                apply(&mut by_change, *key, change);
                let net = match nets.remove(key) {
                    None => Net::first(change.clone()),
                    Some(net) => net.then(change.clone()),
                };
                nets.insert(*key, net);
            }
            let mut by_net = start;
            let mut order: Vec<(&u8, &Net)> = nets.iter().collect();
            if reverse {
                order.reverse();
            }
            for (key, net) in order {
                apply_net(&mut by_net, *key, net);
            }
            prop_assert_eq!(by_change, by_net);
        }

        /// A delete counted as expected only when the row's first change needed the row,
        /// in the sequences a source can make (an insert first or after a delete).
        #[test]
        fn a_delete_is_expected_only_after_a_first_update_or_delete(
            changes in proptest::collection::vec(change(), 1..12),
        ) {
            let mut after_delete = true;
            let changes: Vec<RowChange> = changes
                .into_iter()
                .map(|change| {
                    let change = match change {
                        RowChange::Insert(image) if !after_delete => {
                            RowChange::Update(image.into_iter().map(Some).collect())
                        }
                        other => other,
                    };
                    after_delete = change == RowChange::Delete;
                    change
                })
                .collect();
            let mut changes = changes.into_iter();
            let first = changes.next().expect("one change at least");
            let needed = !matches!(first, RowChange::Insert(_));
            let net = changes.fold(Net::first(first), Net::then);
            if let Net::Delete { expected } | Net::Replace { expected, .. } = net {
                prop_assert_eq!(expected, needed);
            }
        }
    }
}
