//! tandem's comparator: reads both databases in key order, hashes windows of rows with blake3
//! over a canonical encoding, and localises every divergence to rows and columns.
//!
//! The crate is a skeleton in this release: the comparator issue fills it in. It is part of
//! the workspace already so that the crate map in `docs/ARCHITECTURE.md` holds from day one.
