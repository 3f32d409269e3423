//! `TANDEM_*` variables that no command reads: most often a misspelt name, whose value would
//! otherwise be ignored without a word.

use std::collections::BTreeSet;

/// The names among `set` that start with `TANDEM_` and are not in `known`, sorted.
#[must_use]
pub fn misspelt_variables<'a>(
    known: impl IntoIterator<Item = &'a str>,
    set: impl IntoIterator<Item = String>,
) -> Vec<String> {
    let known: BTreeSet<&str> = known.into_iter().collect();
    let misspelt: BTreeSet<String> = set
        .into_iter()
        .filter(|name| name.starts_with("TANDEM_") && !known.contains(name.as_str()))
        .collect();
    misspelt.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::misspelt_variables;

    #[test]
    fn only_unknown_tandem_variables_are_named() {
        let set = ["TANDEM_LISTN", "TANDEM_LISTEN", "HOME", "TANDEM_PG_OLD"].map(str::to_owned);
        assert_eq!(
            misspelt_variables(["TANDEM_LISTEN", "TANDEM_PG_OLD"], set),
            vec!["TANDEM_LISTN".to_owned()]
        );
    }
}
